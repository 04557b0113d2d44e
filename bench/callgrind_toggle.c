/* Lets a Python driver bracket the calls it wants counted (loaded with
 * ctypes by profile_bpmll.py). Outside valgrind the requests are no-ops. */
#include <valgrind/callgrind.h>

void tfl_callgrind_start(void) {
  CALLGRIND_ZERO_STATS;
  CALLGRIND_START_INSTRUMENTATION;
}

void tfl_callgrind_stop(void) {
  CALLGRIND_STOP_INSTRUMENTATION;
  CALLGRIND_DUMP_STATS_AT("measured");
}
