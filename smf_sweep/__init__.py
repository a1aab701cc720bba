"""smf_sweep: ablation sweeps of finetuning methods — task gain against forgetting.

Entry points: `python -m smf_sweep.tune SPEC.yaml` (a sweep), `python -m smf_sweep.trial SPEC.yaml`
(one trial), `python -m smf_sweep.evaluate` (probes), `python -m smf_sweep.world build` (the
embedded world)."""
__version__ = "0.1.0"
