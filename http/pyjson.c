/* pyjson.c - Python's json.dumps(ensure_ascii=False), for jansson values.  See pyjson.h. */
#include "http/pyjson.h"

#include "http/buf.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What is written; a failure (out of memory, a value JSON cannot hold) sets fail. */
typedef struct out {
	qh_buf b;
	bool fail;
} out;

static void put(out *o, const char *s, size_t len)
{
	qh_buf_add(&o->b, s, len);
}

static void puts_(out *o, const char *s)
{
	qh_buf_str(&o->b, s);
}

void qh_pyjson_float(double x, char *buf, size_t cap)
{
	if (x == 0) {
		snprintf(buf, cap, signbit(x) ? "-0.0" : "0.0");
		return;
	}
	/* the shortest %.Ne that reads back to x: its digits and decimal exponent */
	char e[40];
	for (int prec = 0; prec < 17; prec++) {
		snprintf(e, sizeof e, "%.*e", prec, x);
		if (strtod(e, NULL) == x)
			break;
	}
	bool neg = e[0] == '-';
	const char *m = e + neg;
	char digits[24];
	int nd = 0;
	const char *p = m;
	for (; *p && *p != 'e'; p++)
		if (*p >= '0' && *p <= '9')
			digits[nd++] = *p;
	while (nd > 1 && digits[nd - 1] == '0')
		nd--;
	digits[nd] = '\0';
	int exp10 = atoi(p + 1);     /* x = d.ddd * 10^exp10 */
	int decpt = exp10 + 1;       /* x = 0.dddd * 10^decpt, as Python counts it */
	char o[64];                  /* at most sign, 17 digits, "0.000" and an exponent */
	int w = 0;
	if (neg)
		o[w++] = '-';
	if (decpt <= -4 || decpt > 16) {
		o[w++] = digits[0];
		if (nd > 1)
			w += sprintf(o + w, ".%s", digits + 1);
		w += sprintf(o + w, "e%c%02d", exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
	} else if (decpt <= 0) {
		w += sprintf(o + w, "0.");
		for (int i = 0; i < -decpt; i++)
			o[w++] = '0';
		w += sprintf(o + w, "%s", digits);
	} else {
		for (int i = 0; i < decpt; i++)
			o[w++] = i < nd ? digits[i] : '0';
		w += sprintf(o + w, ".%s", nd > decpt ? digits + decpt : "0");
	}
	o[w] = '\0';
	snprintf(buf, cap, "%s", o);
}

static void string(out *o, const char *s, size_t len)
{
	put(o, "\"", 1);
	size_t run = 0;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		const char *esc = NULL;
		char u[8];
		switch (c) {
		case '"': esc = "\\\""; break;
		case '\\': esc = "\\\\"; break;
		case '\b': esc = "\\b"; break;
		case '\f': esc = "\\f"; break;
		case '\n': esc = "\\n"; break;
		case '\r': esc = "\\r"; break;
		case '\t': esc = "\\t"; break;
		default:
			if (c < 0x20) {
				snprintf(u, sizeof u, "\\u%04x", c);
				esc = u;
			}
		}
		if (!esc)
			continue;
		put(o, s + run, i - run);
		puts_(o, esc);
		run = i + 1;
	}
	put(o, s + run, len - run);
	put(o, "\"", 1);
}

static void value(out *o, const json_t *v, int depth)
{
	char num[48];
	if (depth > 512) {
		o->fail = true;
		return;
	}
	switch (json_typeof(v)) {
	case JSON_OBJECT: {
		const char *key;
		json_t *item;
		bool first = true;
		put(o, "{", 1);
		json_object_foreach((json_t *)v, key, item) {
			if (!first)
				put(o, ", ", 2);
			first = false;
			string(o, key, strlen(key));
			put(o, ": ", 2);
			value(o, item, depth + 1);
		}
		put(o, "}", 1);
		break;
	}
	case JSON_ARRAY:
		put(o, "[", 1);
		for (size_t i = 0; i < json_array_size(v); i++) {
			if (i)
				put(o, ", ", 2);
			value(o, json_array_get(v, i), depth + 1);
		}
		put(o, "]", 1);
		break;
	case JSON_STRING:
		string(o, json_string_value(v), json_string_length(v));
		break;
	case JSON_INTEGER:
		snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
		puts_(o, num);
		break;
	case JSON_REAL:
		if (!isfinite(json_real_value(v))) {
			o->fail = true;
			return;
		}
		qh_pyjson_float(json_real_value(v), num, sizeof num);
		puts_(o, num);
		break;
	case JSON_TRUE: puts_(o, "true"); break;
	case JSON_FALSE: puts_(o, "false"); break;
	case JSON_NULL: puts_(o, "null"); break;
	}
}

bool qh_pyjson_dumps(const json_t *v, char **res, size_t *len)
{
	out o = {0};
	value(&o, v, 0);
	put(&o, "", 0);
	if (o.fail || o.b.oom) {
		qh_buf_free(&o.b);
		return false;
	}
	*res = o.b.p;
	*len = o.b.n;
	return true;
}
