#include <time.h>
#include <unistd.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(int c,char**v){double spin=200e-6;for(;;){double t=now();while(now()-t<spin);usleep(1800);}}
