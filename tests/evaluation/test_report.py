"""The HTML report: one self-contained file with every metric, the charts and the examples."""

import base64
import io
import re

import numpy as np
from PIL import Image

from medclip_jax.evaluation import report


def _png(color, size=(48, 40)) -> bytes:
  buffer = io.BytesIO()
  Image.new('RGB', size, color).save(buffer, format='PNG')
  return buffer.getvalue()


RESULTS = {
  'retrieval.gallery_size': 64.0,
  'retrieval.i2t.R@1': 0.21875,
  'retrieval.t2i.R@1': 0.25,
  'zeroshot.modality.top1': 0.625,
  'zeroshot.body_part.top1': float('nan'),
  'caption.cider_d': 0.4312,
  'probe.modality.balanced_accuracy': 0.71,
}

ZEROSHOT = {
  'type': 'zeroshot',
  'fields': {
    'modality': {
      'classes': ['CT', 'MRI', 'X-ray <plain>'],
      'per_class_accuracy': [0.8, 0.5, None],  # no X-ray images in the split
      'support': [10, 6, 0],
      'confusion': [[8, 1, 1], [2, 3, 1], [0, 0, 0]],
      'auroc': {
        'CT': {'auroc': 0.91, 'low': 0.84, 'high': 0.97},
        'MRI': {'auroc': 0.78, 'low': 0.66, 'high': 0.88},
      },
    },
    'body_part': {  # numpy arrays, NaN for an absent class, no AUROC
      'classes': np.array(['brain', 'chest & lungs', 'knee']),
      'per_class_accuracy': np.array([0.9, 0.4, np.nan]),
      'support': np.array([7, 5, 0]),
      'confusion': np.array([[6, 1, 0], [2, 2, 1], [0, 0, 0]]),
    },
  },
}

CAPTION = {
  'type': 'caption',
  'bank': 'train split, 8000 captions',
  'scores': {
    'model': {
      'bleu1': 0.31,
      'bleu2': 0.2,
      'bleu3': 0.12,
      'bleu4': 0.08,
      'meteor': 0.14,
      'rouge_l': 0.29,
      'cider_d': 0.43,
    },
    'random': {
      'bleu1': 0.18,
      'bleu2': 0.09,
      'bleu3': 0.04,
      'bleu4': 0.02,
      'meteor': 0.07,
      'rouge_l': 0.16,
      'cider_d': 0.05,
    },
    'oracle': {
      'bleu1': 0.6,
      'bleu2': 0.48,
      'bleu3': 0.4,
      'bleu4': 0.33,
      'meteor': 0.3,
      'rouge_l': 0.55,
      'cider_d': 2.1,
    },
  },
  'examples': [
    {
      'id': f'img-{i}',
      'image': _png(color),
      'references': [f'Axial CT of the brain, lesion {i} < 5 mm & no bleed.'],
      'retrieved': [
        {
          'id': None if i == 2 else f'cap-{i}-{j}',  # a bank without ids
          'caption': f'Retrieved caption {j} for image {i}.',
          'score': s,
        }
        for j, s in enumerate([0.81234, 0.7, 0.65])
      ],
    }
    for i, color in enumerate(['red', 'green', 'blue'])
  ],
}

PROBE = {
  'type': 'linear_probe',
  'table': {
    field: {
      label: {
        'accuracy': acc + shift,
        'balanced_accuracy': acc + shift - 0.05,
        'auroc': acc + shift + 0.1,
        'train_examples': n,
      }
      for label, acc, n in [('1%', 0.5, 20), ('10%', 0.65, 200), ('100%', 0.8, 2000)]
    }
    for field, shift in [('modality', 0.1), ('body_part', 0.0)]
  },
}


def _write(tmp_path, details):
  path = tmp_path / 'eval' / 'step_100' / 'report.html'
  written = report.write(
    path, step=100, split='test', model='runs/demo @ step 100', results=RESULTS, details=details
  )
  assert written == path and path.exists()
  return path.read_text(encoding='utf-8')


def test_report_is_self_contained_with_metrics_charts_and_examples(tmp_path):
  details = {
    'retrieval': {'type': 'retrieval'},
    'zeroshot': ZEROSHOT,
    'caption': CAPTION,
    'probe': PROBE,
    'future': {'type': 'saliency_maps', 'maps': [[0.1]]},
  }
  text = _write(tmp_path, details)

  assert text.startswith('<!DOCTYPE html>') and text.rstrip().endswith('</html>')
  assert 'src="http' not in text and '<script' not in text.lower()
  assert '<link' not in text and '@import' not in text
  for key in RESULTS:
    assert f'<td class="key">{key}</td>' in text
  assert re.search(r'zeroshot\.body_part\.top1</td><td class="num na">n/a</td>', text)
  assert 'runs/demo @ step 100' in text

  # Two charts per zero-shot field, one probe chart, three example images.
  images = re.findall(r'data:image/png;base64,([A-Za-z0-9+/=]+)', text)
  assert len(images) == 2 * 2 + 1 + 3
  sizes = [Image.open(io.BytesIO(base64.b64decode(data))).size for data in images]
  assert sizes[4:7] == [(48, 40)] * 3  # the examples (caption section), embedded as they came
  charts = sizes[:4] + sizes[7:]  # zero-shot, then the probe
  assert all(w >= 200 and h >= 150 for w, h in charts), sizes

  # Text is escaped wherever it comes from.
  assert 'X-ray &lt;plain&gt;' in text and 'X-ray <plain>' not in text
  assert 'chest &amp; lungs' in text
  assert 'lesion 0 &lt; 5 mm &amp; no bleed.' in text
  assert '0.812' in text and 'Retrieved caption 2 for image 1.' in text and 'cap-1-2' in text
  assert 'None' not in text
  assert 'CIDEr-D' in text and 'upper bound' in text and 'train split, 8000 captions' in text
  assert '0.840 &ndash; 0.970' in text  # the AUROC interval
  assert 'training examples' in text and '2000' in text

  # Only sections with something to draw; the unknown type is skipped.
  assert 'saliency_maps' not in text and 'future' not in text
  assert text.count('<h2') == 4  # metrics, zeroshot, caption, probe


def test_unavailable_caption_metrics_show_the_reason(tmp_path):
  caption = {
    'type': 'caption',
    'bank': 'train split, 0 captions',
    'unavailable': 'pycocoevalcap is not installed & METEOR needs Java',
    'examples': [],
  }
  text = _write(tmp_path, {'caption': caption})
  assert 'Caption metrics unavailable: pycocoevalcap is not installed &amp; METEOR' in text
  assert 'data:image/png' not in text and 'BLEU-1' not in text
  assert '<td class="key">caption.cider_d</td>' in text  # the metrics table is still there
