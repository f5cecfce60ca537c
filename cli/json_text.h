/* json_text.h - text for JSON output that may not be valid UTF-8.
 *
 * Owns: qw_json_text, the clients' one way (qwenctl, qwen-http) to put text that came from
 * the daemon or a user into a JSON string: valid UTF-8 as it is, each invalid byte as
 * U+FFFD (jansson refuses invalid strings outright).
 */
#ifndef QW_CLI_JSON_TEXT_H
#define QW_CLI_JSON_TEXT_H

#include <jansson.h>
#include <stddef.h>

/* A JSON string of s (len bytes), NULL only when out of memory. */
json_t *qw_json_text(const char *s, size_t len);

#endif
