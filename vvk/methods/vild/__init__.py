"""ViLD: open-vocabulary detection by distilling a vision-language teacher (Gu et al., ICLR 2022;
tensorflow/tpu: models/official/detection/projects/vild). Built piece by piece; so far:

- :mod:`~vvk.methods.vild.text`: the text classifier (prompt templates, synonyms);
- :mod:`~vvk.methods.vild.teacher`: CLIP through open_clip, and the stand-in teacher vvk trains on
  its built-in example set (:mod:`~vvk.methods.vild.stand_in`);
- :mod:`~vvk.methods.vild.crops` and :mod:`~vvk.methods.vild.regions`: the distillation targets
  (1x and 1.5x crops of each proposal, embedded once into resumable shards);
- :mod:`~vvk.methods.vild.losses` and :mod:`~vvk.methods.vild.scores`: the distillation loss and the
  ensemble's scores."""
