"""The model for one market: parameters, market data, choice probabilities, closed-form inversions, integration, post-estimation maths."""
