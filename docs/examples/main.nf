#!/usr/bin/env nextflow
// Nextflow workflow: classify DNA barcodes with barcodetool (docs/pipelines.md).
//
//   nextflow run main.nf --reference bold_export.tsv --queries 'queries/*.fasta' --outdir results
//
// --reference  a reference table (BOLD BCDM or v3 TSV, BIOSCAN-5M CSV, or FASTA with SINTAX headers)
// --queries    a glob of FASTA files (or tables) of query barcodes, one per sample
// --model      barcodetool model name or folder (auto: barcodemae-base on a GPU, else barcodemae-nano)
// --device     auto, cpu or cuda

nextflow.enable.dsl = 2

params.reference = 'reference.tsv'
params.queries = 'queries/*.fasta'
params.outdir = 'results'
params.model = 'auto'
params.device = 'auto'

// Embed the reference once and calibrate its thresholds; every sample is classified against this index.
process BUILD_REFERENCE {
    cpus 8
    publishDir params.outdir, mode: 'copy'

    input:
    path reference_table

    output:
    path 'reference.h5'

    script:
    """
    barcodetool reference build ${reference_table} --output reference.h5 --model ${params.model} --device ${params.device} --threads ${task.cpus}
    """
}

process CLASSIFY {
    tag "${queries.baseName}"
    cpus 8
    publishDir params.outdir, mode: 'copy'

    input:
    path queries
    path reference

    output:
    path "${queries.baseName}.classified.tsv"

    script:
    """
    barcodetool classify ${queries} --reference ${reference} --output ${queries.baseName}.classified.tsv --model ${params.model} --device ${params.device} --threads ${task.cpus}
    """
}

workflow {
    reference = BUILD_REFERENCE(file(params.reference, checkIfExists: true))
    CLASSIFY(Channel.fromPath(params.queries, checkIfExists: true), reference)
}
