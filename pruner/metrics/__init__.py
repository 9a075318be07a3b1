"""The field's metrics of generated pictures, each computed by a well-kept library (torchmetrics: extra
``pruner[metrics]``; the preference scores' own packages: ``pruner[preference]``).

- FID and KID (:mod:`pruner.metrics.distribution`): the distance between the feature statistics of two
  picture sets, the student's against a reference (the teacher's pictures of the same prompts and seeds, or
  a folder of real pictures); features from torch-fidelity's Inception (the field's) or, on the bundled
  teacher, from its judge's trunk (:mod:`pruner.metrics.features`).
- CLIP score (:mod:`pruner.metrics.clip`): 100 times the cosine of picture and prompt in a CLIP model's
  space, the model named by hub id or folder.
- Preference scores (:mod:`pruner.metrics.preference`): PickScore (transformers), ImageReward and HPSv2 (their
  own packages, extra ``pruner[preference]``), models trained on people's choices between pictures.

Every model is loaded from a path or hub id; one that is not on the machine is one line naming it and how
to provide it (a :class:`~pruner.errors.PrunerError`).
"""

from __future__ import annotations

from pruner.defaults import FIELD_METRICS as METRICS

__all__ = ["METRICS"]
