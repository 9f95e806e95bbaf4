"""`swarm-hpc bench`: quick testing of many GGUF models on the boards, locally or as a SLURM job array.

    config.py     bench/models.toml, validated (pydantic, STRICT) into a `BenchConfig`
    plan.py       the run directory and its plan.json: one task per (model, node)
    bandwidth.py  the node's memory bandwidth (a large numpy copy): the bound for generation speed
    probe.py      a fixed set of exact-answer questions: speed is never shown without a sign of quality
    results.py    the typed records that cross process boundaries (RepResult, Measurement, ModelResult, Stat)
    measure.py    one model in one process: load, prompt and generation speed per repetition, the probe, VmHWM
    runner.py     runs `measure` in a subprocess per model (a crash or memory blow-up stays contained)
    task.py       what one SLURM array task runs (`python -m swarm_hpc.ops.benchmark.task RUN_DIR`)
    submit.py     renders swarm_hpc/templates/jobs/bench-array.sbatch.j2, submits it with sbatch, waits
    report.py     assembles the results: results.json/csv, report.md, plot.png, comparison with an older run
    cli.py        the click group `bench` (`models`, `report`)
"""
