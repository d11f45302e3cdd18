"""Models worth keeping: the MLflow pyfunc wrapper of an exported gloss model, logging a replicate
trial's model as an MLflow logged model, registering each cell's best replicate, and `gloss predict`
on a model folder, a `runs:/` URI or a `models:/NAME/VERSION` URI."""
