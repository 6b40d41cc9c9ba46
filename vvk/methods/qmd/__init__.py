"""Query-modulated detection (Fornoni et al., arXiv 2106.10258) in ``vvk train detector --method
qmd``: the training data (queries synthesised from the annotations, ``vvk.data.queries``) and the
model's query inputs. The detector is ``vvk.models.detectors.qmd``; its query-conditioned AP is
``vvk.methods.detection.query_eval``."""

from vvk.methods.qmd.train import QueryPlan, collate_model_queries, plan_queries

__all__ = ["QueryPlan", "collate_model_queries", "plan_queries"]
