#!/usr/bin/env nextflow
// Nextflow workflow: classify one large FASTA of query barcodes in parts, on many nodes, against one shared
// reference index (docs/pipelines.md).
//
//   nextflow run scatter.nf --queries queries.fasta --reference reference.h5 --per_part 100000 --outdir results
//
// The index is built once, before, with `barcodetool reference build` (BUILD_REFERENCE in main.nf beside this
// file does it). The parts are consecutive runs of records and are gathered in their order, so
// <outdir>/classified.tsv has the rows, in the order, of one `barcodetool classify` of the whole file.
//
// --queries    one FASTA of query barcodes (plain or .gz)
// --reference  the index from `barcodetool reference build`
// --per_part   queries per classify job: splitFasta cuts by a number of records, not into a number of parts
// --memory     memory of a classify job (see CLASSIFY_PART)
// --outdir     where classified.tsv is written
// --model      the model that built the index (auto: barcodemae-base on a GPU, else barcodemae-nano)
// --device     auto, cpu or cuda

nextflow.enable.dsl = 2

params.queries = 'queries.fasta'
params.reference = 'reference.h5'
params.per_part = 100000
params.memory = '2 GB'
params.outdir = 'results'
params.model = 'auto'
params.device = 'auto'

// The job holds the index once, whatever the part's size (queries are streamed): about 1.2 GiB for a
// 123k-barcode index, about 2.6 GiB for a million (docs/benchmarks.md); --memory '3 GB' for the latter.
process CLASSIFY_PART {
    tag "${part.baseName}"
    cpus 8
    memory params.memory

    input:
    path part
    path reference

    output:
    path "${part.baseName}.tsv"

    script:
    """
    barcodetool classify ${part} --reference ${reference} --output ${part.baseName}.tsv --model ${params.model} --device ${params.device} --threads ${task.cpus}
    """
}

// splitFasta writes the parts as queries.1.fasta, queries.2.fasta, ... in the order of the records (never an
// empty one), but the tables arrive in whatever order the jobs end. collectFile puts them back in the order of
// the part's number, compared as a number (by name, queries.10 would come before queries.2), keeps the first
// table's header line and skips it in the others.
workflow {
    parts = Channel.fromPath(params.queries, checkIfExists: true).splitFasta(by: params.per_part, file: true)
    CLASSIFY_PART(parts, file(params.reference, checkIfExists: true))
        .collectFile(name: 'classified.tsv', storeDir: params.outdir, keepHeader: true, skip: 1,
                     sort: { table -> table.baseName.tokenize('.').last().toInteger() })
}
