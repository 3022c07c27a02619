"""The pieces every trainer shares: the learning-rate schedule and parameter groups
(`schedule`), atomic checkpoints, RNG state and the run log (`state`), and the contrastive
objective with features gathered across ranks (`contrastive`). The CLIP trainer is
`clipkit.train`; the generator's is `clipkit.generator.train`."""
