"""The supply side: Bertrand–Nash markups and marginal costs for one market."""
