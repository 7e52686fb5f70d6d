"""Exported policies: the policy index, playing policies in batches, their assessment and
the statistics of their returns; the book's hard-coded CartPole policy."""
