# Data stage: load the dataset and the external pool, validate and canonicalise SMILES, split train/validation/test,
# report (and by default drop) external molecules that leak into validation or test.


rule prepare_data:
    output:
        train=f"{R}/data/train.csv",
        validation=f"{R}/data/validation.csv",
        test=f"{R}/data/test.csv",
        external=f"{R}/data/external.csv",
        report=f"{R}/data/data_report.json",
    params:
        py=PY,
        args=jarg(config["data"]),
        outdir=lambda w, output: str(Path(output.report).parent),
        script=script("prepare_data"),
        code=code("prepare_data"),
    conda:
        ENV
    log:
        f"{R}/logs/prepare_data.log",
    benchmark:
        f"{R}/benchmarks/prepare_data.tsv"
    shell:
        "{params.py:q} {params.script:q} --args {params.args:q} --outdir {params.outdir:q} > {log:q} 2>&1"
