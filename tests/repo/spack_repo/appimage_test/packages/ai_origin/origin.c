const char *priv(void);
const char *origin(void) { return priv(); }
