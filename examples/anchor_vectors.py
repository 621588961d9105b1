"""The paper's Fig. 4 for each model side by side: PCA of the last position after each
layer over every (key, pair), the cosine matrix of the last layer's output in target order
(equal targets boxed), and the scores (same-target parallelism, (4,3) vs (3,4) collapse).

    python examples/anchor_vectors.py [MODEL ...]
    (default: both shipped models; written to out/interp/anchor_vectors.html)
"""

from example_args import example_args

args = example_args(__doc__, "out/interp")

import models  # noqa: E402  (after the arguments: --help needs no torch)
from interp import anchor_vectors, figures, report  # noqa: E402

rows: dict[str, list] = {}
for name in args.models:
    model, task = models.load(name), models.hooked.task_of(name)
    vectors = anchor_vectors(model, task)
    for hook, scores in vectors.scores().items():
        print(f"{name} {hook}: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()))
    for hook in vectors.hooks:
        coords, explained = vectors.pca(hook)
        rows.setdefault(f"PCA at {hook}", []).append((name, figures.vector_scatter(vectors, coords, f"explained {explained[0]:.2f}, {explained[1]:.2f}")))
    keys = report.mid_keys(task)
    rows.setdefault("Cosine similarity after the last layer (paper Fig. 4)", []).append((name, figures.cosine_figure(vectors, -1, keys)))
    rows.setdefault("Scores per layer", []).append((name, figures.vector_scores_figure(vectors.scores())))
print(f"written to {report.write_page(args.out / 'anchor_vectors.html', 'Anchor vectors', list(rows.items()))}")
