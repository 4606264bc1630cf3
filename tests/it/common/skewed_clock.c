/* Preloaded into a service under test (LD_PRELOAD) to run its wall clock CN_TEST_CLOCK_SKEW_SECS
 * seconds ahead (or behind, if negative) of the host's, as a host whose time service is broken
 * would. Only the wall clock moves: the monotonic clock, which timers use, is left alone. A wait
 * on a condition variable until a wall-clock instant (librdkafka's timed waits) is moved back by
 * the skew, since the kernel's wall clock it waits on is not skewed. The symbols are those the
 * service's binary imports (`nm -D`). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <threads.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

static long long skew_ns(void) {
  static long long skew = -1;
  static int read = 0;
  if (!read) {
    const char *value = getenv("CN_TEST_CLOCK_SKEW_SECS");
    skew = value ? atoll(value) * 1000000000LL : 0;
    read = 1;
  }
  return skew;
}

int clock_gettime(clockid_t id, struct timespec *ts) {
  static int (*real)(clockid_t, struct timespec *) = 0;
  if (!real) real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
  int r = real(id, ts);
  if (r == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) {
    long long ns = ts->tv_sec * 1000000000LL + ts->tv_nsec + skew_ns();
    ts->tv_sec = ns / 1000000000LL;
    ts->tv_nsec = ns % 1000000000LL;
  }
  return r;
}

int gettimeofday(struct timeval *tv, void *tz) {
  struct timespec ts;
  if (clock_gettime(CLOCK_REALTIME, &ts) != 0) return -1;
  if (tv) {
    tv->tv_sec = ts.tv_sec;
    tv->tv_usec = ts.tv_nsec / 1000;
  }
  (void)tz;
  return 0;
}

time_t time(time_t *t) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  if (t) *t = ts.tv_sec;
  return ts.tv_sec;
}

/* librdkafka's timed waits: C11 cnd_timedwait, until a wall-clock instant it computed on the
 * skewed clock, while the kernel waits on the real one. */
int cnd_timedwait(cnd_t *cond, mtx_t *mutex, const struct timespec *until) {
  static int (*real)(cnd_t *, mtx_t *, const struct timespec *) = 0;
  if (!real)
    real = (int (*)(cnd_t *, mtx_t *, const struct timespec *))dlsym(RTLD_NEXT, "cnd_timedwait");
  if (!until) return real(cond, mutex, until);
  long long ns = until->tv_sec * 1000000000LL + until->tv_nsec - skew_ns();
  struct timespec moved = {ns / 1000000000LL, ns % 1000000000LL};
  return real(cond, mutex, &moved);
}
