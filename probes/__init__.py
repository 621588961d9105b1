"""Behavioural and causal measurements on a HookedTransformer trained on the anchor task."""

from models.task import ROLES
from probes.ablation import ABLATIONS, AblationResult, AblationSweep, ablate, ablation_sweep
from probes.composition import OUTCOMES, CompositionResult, composition_pairs, composition_test
from probes.patching import PAIR_KINDS, PatchingResult, PromptPairs, make_pairs, order_probe, patch_sweep, prompt_pairs
from probes.report import PROBES, report_sections, run_probe
from probes.sites import KINDS, Site
from probes.solution import Classification, classify

__all__ = [
    "ABLATIONS", "KINDS", "OUTCOMES", "PAIR_KINDS", "PROBES", "ROLES",
    "AblationResult", "AblationSweep", "Classification", "CompositionResult", "PatchingResult", "PromptPairs", "Site",
    "ablate", "ablation_sweep", "classify", "composition_pairs", "composition_test", "make_pairs", "order_probe",
    "patch_sweep", "prompt_pairs", "report_sections", "run_probe",
]
