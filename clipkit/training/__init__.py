"""The training skeleton every clipkit trainer runs on, and what the trainers share.

    loop.py         `Trainer`: runs the steps up to `stop_at`, one `optimizer_step` each
                    (zero grad, backward, clip, optimiser, scheduler), a log record every
                    N steps, atomic checkpoints every N steps and at the end, exact resume
    state.py        the one training-checkpoint format (`save_checkpoint`, the one
                    `load_checkpoint`, which also reads the generator's older safetensors
                    checkpoints, `restore`), RNG state, atomic writes, the JSON-lines run log
    params.py       the one weight-decay rule as data (`DecayRule`) and `param_groups`
    schedule.py     the one learning-rate schedule: linear warm-up, cosine to its floor
    contrastive.py  CLIP's objective: features gathered across ranks, the symmetric loss,
                    the temperature clamp, `train_step`

The trainers keep only their model, batches and loss: CLIP in `clipkit.train`, the
generator's dVAE and transformer in `clipkit.generator.train`, the benchmarks' judge in
`benchmarks/judge.py`. Importing this package loads nothing; its modules load on use.
"""
