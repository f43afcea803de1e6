"""clayops: fault-tolerant lead enrichment in front of Clay webhooks."""
