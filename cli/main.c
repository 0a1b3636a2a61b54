#include <stdio.h>
int main(void) { puts("kvforge"); return 0; }
