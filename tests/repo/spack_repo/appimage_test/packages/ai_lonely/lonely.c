#include <stdio.h>
int main(void) { puts("lonely"); return 0; }
