"""The paper's Fig. 5 for each model side by side: condensation of the first layer's W_Q
neurons (cosine > 0.7 groups), the key embeddings' covariance spectrum and PCA, and the
singular-value spectra and stable ranks of every weight matrix.

    python examples/complexity.py [MODEL ...]
    (default: both shipped models; written to out/interp/complexity.html)
"""

from example_args import example_args

args = example_args(__doc__, "out/interp")

import models  # noqa: E402  (after the arguments: --help needs no torch)
from interp import figures, report, weight_complexity  # noqa: E402

rows: dict[str, list] = {"W_Q condensation": [], "Key embeddings": [], "Singular values": []}
for name in args.models:
    model, task = models.load(name), models.hooked.task_of(name)
    measured = weight_complexity(model, task)
    print(f"{name}: {measured.to_dict()['wq_condensation']}, ordinal R^2 {measured.embedding.ordinal_r2:.2f}")
    rows["W_Q condensation"].append((name, figures.condensation_figure(measured.condensation)))
    rows["Key embeddings"].append((name, figures.embedding_figure(measured.embedding)))
    rows["Singular values"].append((name, figures.spectra_figure(measured.spectra)))
print(f"written to {report.write_page(args.out / 'complexity.html', 'Weight complexity', list(rows.items()))}")
