"""Quantization analysis: which layers break under INT8, and the model that meets a target mAP.

    stages.py         analyze(): the stages in order (calibrate once, rank, search, write)
    search.py         the decisions as pure functions: ranking order, target prefix search
    target.py         the target stage: search.py wired to trial models, PTQ and Paddle Inference
    sensitivity.py    per-layer damage: mAP (Evaluator) and SQNR proxy rankings
    graph.py          QuantGraph: trial models (any layer set back in float) from one calibration
    context.py        AnalysisContext: result cache (resume), counters, progress, stage timing
    results.py        AnalysisOptions, AnalysisResult, TargetResult
    outputs.py        ranking.csv/json, sensitivity chart, analysis.md, the analyzed config
    distributions.py  activation/weight distribution plots and outlier statistics
    plots.py          the matplotlib drawing
    reference.py      paddleslim's own Analysis, instrumented (tools/bench_analysis.py compares)
"""
