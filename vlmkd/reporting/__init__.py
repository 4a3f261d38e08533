"""What a person looks at after a stage, built on the stages' outputs (it imports the stages, never the reverse):
`gallery` (an HTML page of a caption store, `vlmkd caption-info --html`) with `diversity` (how much captions differ),
`training_curves` (`vlmkd plot RUN`) and `eval_plots` (per-class accuracy and t-SNE maps of an evaluation).

The evaluate stage draws its figures with `eval_plots`, as its result holds them; the caption CLI writes galleries.
Importing this package imports none of them (matplotlib is heavy)."""
