"""FlexFactor's answers: webhook deliveries, the inbox, reconcile, outcomes applied to orders and purchases."""
