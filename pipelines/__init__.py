"""Entry points: the streaming job, the batch recompute, and the options they share."""
