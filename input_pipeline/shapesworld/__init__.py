"""ShapesWorld: a procedurally rendered vision-language dataset with gold phrases and links.

Modules: scenes (sampling, relations), render (rasteriser, PNG), language (captions and gold
phrase tuples), downstream (VQA, visual entailment, referring expressions) and generate (the
public API: ShapesWorldConfig, generate_record, generate_records, generate_downstream,
word_list, vqa_answers).
"""
