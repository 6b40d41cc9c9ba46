"""ViLD: open-vocabulary detection by distilling a vision-language teacher (Gu et al., ICLR 2022;
tensorflow/tpu: models/official/detection/projects/vild).

- :mod:`~vvk.methods.vild.text`: the text classifier (prompt templates, synonyms);
- :mod:`~vvk.methods.vild.teacher`: CLIP through open_clip, and the stand-in teacher vvk trains on
  its built-in example set (:mod:`~vvk.methods.vild.stand_in`);
- :mod:`~vvk.methods.vild.crops`, :mod:`~vvk.methods.vild.regions`: the distillation targets (1x
  and 1.5x crops of each proposal, embedded once into resumable shards), and
  :mod:`~vvk.methods.vild.demo` for the built-in example's;
- :mod:`~vvk.methods.vild.split`, :mod:`~vvk.methods.vild.vocabulary`,
  :mod:`~vvk.methods.vild.open_vocabulary`: novel categories, cached text embeddings, new
  vocabularies at test time;
- :mod:`~vvk.methods.vild.train`: what ``vvk train detector --method vild...`` adds to a run.

The detectors themselves (``vild-*``: heads, losses, scores) are in
:mod:`vvk.models.detectors.vild` and :mod:`vvk.models.detectors.vild_scoring`.
"""
