"""A staged, cached pipeline for Kaggle-style image classification competitions."""
