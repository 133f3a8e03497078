"""rag-eval: the evaluation front end over ``rag.evaluation`` (see ``evals.cli``)."""
