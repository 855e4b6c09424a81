"""Business rules as data: the rule-file schema, the pricing engine and the data-quality suites."""
