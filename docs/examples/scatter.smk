# Snakemake workflow: classify one large FASTA of query barcodes in parts, on many nodes, against one shared
# reference index (docs/pipelines.md).
#
#   snakemake -s scatter.smk --cores 8 --config queries=queries.fasta reference=reference.h5 parts=32
#
# The index is built once, before, with `barcodetool reference build` (the `reference` rule of Snakefile
# beside this file does it), and every part reads it from a shared file system. The parts are consecutive
# runs of records, so results/classified.tsv has the rows, in the order, of one `barcodetool classify` of the
# whole file. Options (--config key=value, or a config file):
#   queries     one FASTA of query barcodes, uncompressed    [queries.fasta]
#   reference   the index (`barcodetool reference build`)    [reference.h5]
#   parts       classify jobs (or --set-scatter split=N)     [8]
#   output      the gathered table                           [results/classified.tsv]
#   mem_mb      memory of a classify job, MB (see the rule)  [2048]
#   model       the model that built the index               [auto: barcodemae-base on a GPU, else barcodemae-nano]
#   device      auto, cpu, cuda                              [auto]

QUERIES = config.get("queries", "queries.fasta")
REFERENCE = config.get("reference", "reference.h5")
PARTS = int(config.get("parts", 8))
OUTPUT = config.get("output", "results/classified.tsv")
MEM_MB = int(config.get("mem_mb", 2048))
MODEL = config.get("model", "auto")
DEVICE = config.get("device", "auto")

scattergather:
    split=PARTS,

# Reading the queries twice and concatenating tables take seconds: not worth a cluster job each.
localrules: all, split, gather


rule all:
    input:
        OUTPUT,


# Record r of n (counting from 0) goes to part floor(r * parts / n) + 1: consecutive runs of records whose sizes
# differ by one at most, so the parts read in order are the file. With fewer records than parts some parts stay
# empty, but every part file is created, as Snakemake expects.
rule split:
    input:
        QUERIES,
    output:
        temp(scatter.split("parts/{scatteritem}.fasta")),
    shell:
        """
        awk -v names='{output}' '
            BEGIN {{
                parts = split(names, out, " ")
                for (i = 1; i <= parts; i++) {{ printf "" > out[i]; close(out[i]) }}
            }}
            NR == FNR {{ n += /^>/; next }}
            /^>/ {{
                part = int(r++ * parts / n) + 1
                if (part != current) {{ if (current) close(out[current]); current = part }}
            }}
            part {{ print > out[part] }}
        ' {input} {input}
        """


# barcodetool refuses an input without records (exit status 1), so an empty part gets an empty table instead:
# gathering skips it.
rule classify:
    input:
        queries="parts/{scatteritem}.fasta",
        reference=REFERENCE,
    output:
        temp("results/parts/{scatteritem}.classified.tsv"),
    params:
        model=MODEL,
        device=DEVICE,
    threads: 8
    resources:
        # the job holds the index once, whatever the part's size (queries are streamed): about 1.2 GiB for
        # a 123k-barcode index, about 2.6 GiB for a million (docs/benchmarks.md); mem_mb=3072 for the latter
        mem_mb=MEM_MB,
    log:
        "logs/classify/{scatteritem}.log",
    shell:
        "if [ -s {input.queries} ]; then "
        "barcodetool classify {input.queries} --reference {input.reference} --output {output} "
        "--model {params.model} --device {params.device} --threads {threads} 2> {log}; "
        "else : > {output}; echo 'no queries in this part' > {log}; fi"


# Every part's table starts with the same header line: keep the first file's, then the parts' rows in order.
rule gather:
    input:
        gather.split("results/parts/{scatteritem}.classified.tsv"),
    output:
        OUTPUT,
    shell:
        "awk 'FNR > 1 || NR == 1' {input} > {output}"
