"""The dataset formats that `python -m medclip_jax.data.prepare` converts.

A format is a builder function in its own module: its keyword arguments are
named like the prepare flags it reads, and it returns a `base.Source` (the
records, lazily, and the rule that puts each record in a split). Real
formats read their inputs into `base.Entry`s and hand them to
`base.real_source` (or `base.grouped_source`, which splits by case or
patient), which loads images and cleans captions robustly and turns failures
into `base.Skipped` with a reason. Register a new builder here.
"""

from collections.abc import Callable

from medclip_jax.data.formats import base
from medclip_jax.data.formats import dicom
from medclip_jax.data.formats import manifest
from medclip_jax.data.formats import medpix
from medclip_jax.data.formats import pubmedvision
from medclip_jax.data.formats import reports
from medclip_jax.data.formats import roco
from medclip_jax.data.formats import synthetic

# 'synthetic' first: error messages list the formats in this order.
FORMATS: dict[str, Callable[..., base.Source]] = {
  'synthetic': synthetic.source,
  'manifest': manifest.source,
  'medpix': medpix.source,
  'roco': roco.source,
  'dicom': dicom.source,
  'pubmedvision': pubmedvision.source,
  'reports': reports.source,
}
