#include <stdio.h>
const char *leaf(void);
int main(void) { printf("runpath: %s\n", leaf()); return 0; }
