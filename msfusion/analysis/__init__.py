"""Analysis tools: complexity, speed, fusion time, receptive fields, gradient maps."""
