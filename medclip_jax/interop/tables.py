"""Conversion facts, each stated once: read by the towers, conversion, export and the PyTorch model.

Pure data with no imports, so `medclip_jax.torch_model` can use it without JAX.
"""

# ResNet depth -> (block kind, blocks in layer1..layer4), as in torchvision.
RESNET_LAYOUTS = {
  18: ('basic', (2, 2, 2, 2)),
  34: ('basic', (3, 4, 6, 3)),
  50: ('bottleneck', (3, 4, 6, 3)),
  101: ('bottleneck', (3, 4, 23, 3)),
}

# Hugging Face BertConfig field -> config.model.text field (= BertEncoder argument).
HF_TO_TEXT = {
  'vocab_size': 'vocab_size',
  'hidden_size': 'hidden_size',
  'num_hidden_layers': 'num_layers',
  'num_attention_heads': 'num_heads',
  'intermediate_size': 'intermediate_size',
  'max_position_embeddings': 'max_position_embeddings',
  'type_vocab_size': 'type_vocab_size',
  'layer_norm_eps': 'layer_norm_eps',
  'hidden_dropout_prob': 'dropout_rate',
}

# A Hugging Face model directory's weights, in the order they are looked for
# (the export writes the first).
HF_WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin')
# Hugging Face state-dict keys with no counterpart in our BERT: the pooler (we
# pool ourselves), the position-id buffer, and the heads of BertFor* models (pre-training
# and masked LM; sequence, token and multiple-choice classification; question answering).
HF_BERT_IGNORED = ('pooler.', 'embeddings.position_ids', 'cls.', 'classifier.', 'qa_outputs.')
# transformers' BertConfig defaults for the config.json fields that BERTs converted from
# Google's original release lack (as transformers reads such a config.json).
HF_BERT_DEFAULTS = {'model_type': 'bert', 'layer_norm_eps': 1e-12}
# torchvision keys with no counterpart in an encoder without a classifier.
TORCHVISION_RESNET_IGNORED = ('fc.',)

# What `python -m medclip_jax.export` writes, relative to the export directory.
EXPORT_FILES = {
  'image_encoder': 'image_encoder.safetensors',  # torchvision ResNet keys, no fc.*
  'text_encoder': 'text_encoder',  # a Hugging Face BertModel + tokenizer directory
  'heads': 'heads.safetensors',  # projections, logit scale (and bias)
  'metadata': 'medclip.json',  # sizes, pooling, preprocessing, step, config
}
# Parameter-tree key -> heads.safetensors key (Dense kernels are transposed to
# torch's [out, in]; scalars are stored with shape (1,) by safetensors).
HEADS = {
  'image_projection': 'image_projection.weight',
  'text_projection': 'text_projection.weight',
  'logit_scale': 'logit_scale',
  'logit_bias': 'logit_bias',
}
# The parameter-tree keys of the model an export holds; anything else (MMCLIP's decoders)
# only training uses.
EXPORTED_PARAMS = ('image_encoder', 'text_encoder', *HEADS)
