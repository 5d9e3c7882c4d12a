#include <stdio.h>
const char *origin(void);
int main(void) { printf("origin: %s\n", origin()); return 0; }
