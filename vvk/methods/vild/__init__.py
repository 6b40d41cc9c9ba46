"""ViLD: open-vocabulary detection by distilling a vision-language teacher (Gu et al., ICLR 2022;
tensorflow/tpu: models/official/detection/projects/vild). Built piece by piece; so far the text
classifier (:mod:`vvk.methods.vild.text`), the distillation loss (:mod:`vvk.methods.vild.losses`)
and the ensemble's scores (:mod:`vvk.methods.vild.scores`)."""
