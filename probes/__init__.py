"""Behavioural and causal measurements on a HookedTransformer trained on the anchor task."""

from models.task import ROLES
from probes.ablation import ABLATIONS, AblationResult, AblationSweep, ablate, ablation_sweep
from probes.composition import OUTCOMES, CompositionResult, composition_pairs, composition_test
from probes.das import VARIABLES, DasResult, DasSite, das
from probes.patching import PAIR_KINDS, PatchingResult, PromptPairs, make_pairs, order_probe, patch_sweep, prompt_pairs
from probes.paths import PATH_PAIRS, PathPatching, path_patching
from probes.report import PROBES, report_sections, run_probe
from probes.sites import KINDS, Site
from probes.solution import Classification, classify

__all__ = [
    "ABLATIONS", "KINDS", "OUTCOMES", "PAIR_KINDS", "PATH_PAIRS", "PROBES", "ROLES", "VARIABLES",
    "AblationResult", "AblationSweep", "Classification", "CompositionResult", "DasResult", "DasSite", "PatchingResult",
    "PathPatching", "PromptPairs", "Site",
    "ablate", "ablation_sweep", "classify", "composition_pairs", "composition_test", "das", "make_pairs", "order_probe",
    "patch_sweep", "path_patching", "prompt_pairs", "report_sections", "run_probe",
]
