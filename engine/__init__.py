"""audience-engine: fast, ordered, loss-free uploads of people lists to Meta Custom Audiences."""
