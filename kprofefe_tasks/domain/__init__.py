"""The nouns of the product, pure: targets, annotations, deliveries, outcomes, errors. No I/O."""
