# The starting encoder and tokenizer, materialised once as a local directory: the published MoLFormer-XL fetched from
# the hub (so cluster jobs never need the network), or a small randomly initialised MoLFormer whose tokenizer is built
# from the data (the offline demo).


rule pretrained_encoder:
    input:
        pretrained_inputs,
    output:
        directory(f"{R}/pretrained"),
    params:
        py=PY,
        args=jarg(config["model"]),
        data=f"{R}/data",
        script=script("pretrained"),
        code=code("pretrained"),
    conda:
        ENV
    log:
        f"{R}/logs/pretrained_encoder.log",
    benchmark:
        f"{R}/benchmarks/pretrained_encoder.tsv"
    shell:
        "{params.py:q} {params.script:q} --args {params.args:q} --data {params.data:q} --out {output:q} > {log:q} 2>&1"
