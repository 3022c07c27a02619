"""Dataset readers and the synthetic world used to train the shipped models."""
