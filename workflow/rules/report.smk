# The honest table (mean ± sd over seeds, paired tests against matched controls) and the figures, annotated for
# `snakemake --report report.html`.

REPORT = ROOT / "workflow" / "report"


# Cheap rules, and the two that may need the network (hub dataset and model), run on the submitting node.
localrules:
    prepare_data,
    pretrained_encoder,
    select_scored,
    select_control,
    select_random,
    select_ranked,
    recommend,
    metrics_table,
    figures,


rule metrics_table:
    input:
        base=rules.train_base.output.metrics,
        runs=[f"{d}/metrics.json" for d in finetune_runs()],
    output:
        table=report(f"{R}/metrics.csv", category="1. Metrics", caption=str(REPORT / "metrics.rst")),
        markdown=report(f"{R}/metrics.md", category="1. Metrics", caption=str(REPORT / "metrics.rst")),
        per_run=report(f"{R}/metrics_per_run.csv", category="1. Metrics", caption=str(REPORT / "per_run.rst")),
    params:
        py=PY,
        script=script("metrics_table"),
        code=code("metrics_table"),
    conda:
        ENV
    log:
        f"{R}/logs/metrics_table.log",
    benchmark:
        f"{R}/benchmarks/metrics_table.tsv"
    shell:
        "{params.py:q} {params.script:q} --base {input.base:q} {input.runs:q}"
        " --out-table {output.table:q} --out-markdown {output.markdown:q} --out-per-run {output.per_run:q}"
        " > {log:q} 2>&1"


rule figures:
    input:
        table=rules.metrics_table.output.table,
        per_run=rules.metrics_table.output.per_run,
        base_log=rules.train_base.output.log,
        scores=rules.influence_scores.output.table,
        selections=histogram_selections(),
        runs=[f"{d}/metrics.json" for d in finetune_runs()],
    output:
        rmse=report(f"{R}/figures/rmse_vs_k.png", category="2. Figures", caption=str(REPORT / "rmse_vs_k.rst")),
        curves=report(f"{R}/figures/training_curves.png", category="2. Figures", caption=str(REPORT / "curves.rst")),
        hist=report(f"{R}/figures/influence_histogram.png", category="2. Figures", caption=str(REPORT / "histogram.rst")),
        scatter=report(f"{R}/figures/pred_vs_true.png", category="2. Figures", caption=str(REPORT / "scatter.rst")),
    params:
        py=PY,
        results=lambda w, input: str(Path(input.base_log).parents[1]),
        outdir=lambda w, output: str(Path(output.rmse).parent),
        script=script("figures"),
        code=code("figures"),
    conda:
        ENV
    log:
        f"{R}/logs/figures.log",
    benchmark:
        f"{R}/benchmarks/figures.tsv"
    shell:
        "{params.py:q} {params.script:q} --results {params.results:q} --table {input.table:q} --per-run {input.per_run:q}"
        " --scores {input.scores:q} --outdir {params.outdir:q} > {log:q} 2>&1"
