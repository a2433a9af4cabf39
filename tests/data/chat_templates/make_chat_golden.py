#!/usr/bin/env python3
"""Renders every chat template here with transformers' own chat-template code and writes golden.json.

Run with a Python that has transformers and jinja2 installed:
    python tests/data/chat_templates/make_chat_golden.py

Every *.jinja file is rendered with every conversation below through
transformers.utils.chat_template_utils.render_jinja_template, the function apply_chat_template uses. The
exact keyword arguments that transformers hands to jinja2's Template.render are recorded as the case's
context, so the C++ engine is fed precisely what jinja2 saw. Small inline templates ("snippets") pin down
semantics that are easy to get wrong; they are rendered with transformers' own jinja2 environment too.
"""
import json
import pathlib
import sys

import jinja2
import transformers
from transformers.utils import chat_template_utils as ctu

HERE = pathlib.Path(__file__).resolve().parent

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "The city, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "default": 1},
                "threshold": {"type": "number", "default": 0.5},
            },
            "required": ["location"],
        },
    },
}
SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the web; returns snippets with \"quotes\" and ünïcode",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}, "safe": {"type": "boolean", "default": True},
                           "filters": {"type": ["object", "null"], "default": None}},
            "required": ["query"],
        },
    },
}
TOOLS = [WEATHER_TOOL, SEARCH_TOOL]


def tool_call_turns(arguments, content_key):
    assistant = {"role": "assistant",
                 "tool_calls": [{"id": "call12345", "type": "function",
                                 "function": {"name": "get_weather", "arguments": arguments}}]}
    if content_key:
        assistant["content"] = None
    return [
        SYSTEM,
        {"role": "user", "content": "What's the weather in Paris?"},
        assistant,
        {"role": "tool", "tool_call_id": "call12345", "name": "get_weather",
         "content": "{\"temperature\": 21.5, \"unit\": \"celsius\"}"},
        {"role": "assistant", "content": "It is 21.5 °C in Paris."},
    ]


# name -> (messages, tools, add_generation_prompt values, extra render kwargs)
CONVERSATIONS = {
    "system_user": ([SYSTEM, {"role": "user", "content": "Hello!"}], None, [True], {}),
    "user_only": ([{"role": "user", "content": "What is 2 + 2?"}], None, [True, False], {}),
    "multi_turn": ([{"role": "user", "content": "Hi there"},
                    {"role": "assistant", "content": "Hello! How can I help?"},
                    {"role": "user", "content": "Tell me a joke."}], None, [True], {}),
    "assistant_last": ([SYSTEM,
                        {"role": "user", "content": "Who are you?"},
                        {"role": "assistant", "content": "   I am an assistant   "},
                        {"role": "user", "content": "Thanks."},
                        {"role": "assistant", "content": "You're welcome!"}], None, [False, True], {}),
    "unicode_quotes": ([{"role": "system", "content": "Réponds «vite». Use \"quotes\", 'apostrophes' and \\ backslashes."},
                        {"role": "user", "content": "  Привет, 世界! 🙂\tTab\nNew line\r\nCRLF  "},
                        {"role": "assistant", "content": "  padded </s> [INST] <|im_end|>  "},
                        {"role": "user", "content": "{{ not a template }} {% raw %} \u2028 end"}], None, [True], {}),
    "tool_calls_dict_args": (tool_call_turns({"location": "Paris", "unit": "celsius"}, False), TOOLS, [False], {}),
    "tool_calls_string_args": (tool_call_turns("{\"location\": \"Paris\"}", True), TOOLS, [True], {}),
    "tools_offered": ([SYSTEM, {"role": "user", "content": "Search for cats."}], TOOLS, [True], {}),
    "reasoning": ([{"role": "user", "content": "What is 2 + 2?"},
                   {"role": "assistant", "content": "<think>\nAdd them.\n</think>\n\nIt is 4."},
                   {"role": "user", "content": "And 3 + 3?"},
                   {"role": "assistant", "content": "It is 6.", "reasoning_content": "Add again."}],
                  None, [False], {}),
    "content_parts": ([{"role": "user", "content": [{"type": "text", "text": "Describe this."}]}], None, [True], {}),
    "invalid_two_users": ([{"role": "user", "content": "One"}, {"role": "user", "content": "Two"}], None, [True], {}),
    "invalid_role": ([{"role": "user", "content": "Hi"}, {"role": "narrator", "content": "Meanwhile..."}],
                     None, [True], {}),
    "empty": ([], None, [True], {}),
    "custom_kwargs": ([SYSTEM, {"role": "user", "content": "Today?"}], None, [True],
                      {"date_string": "01 Jan 2025", "tools_in_user_message": False}),
}

# Conversations that only make sense for one template's own message format.
TEMPLATE_CONVERSATIONS = {
    "CohereForAI-c4ai-command-r-v01-tool_use.jinja": {
        "cohere_tools": ([{"role": "user", "content": "Whats the biggest penguin in the world?"}],
                         [{"name": "internet_search",
                           "description": "Returns a list of relevant document snippets for a textual query",
                           "parameter_definitions": {"query": {"description": "Query to search the internet with",
                                                               "type": "str", "required": True},
                                                     "top_k": {"description": "How many results",
                                                               "type": "int", "required": False}}},
                          {"name": "directly_answer", "description": "Calls a standard AI chatbot",
                           "parameter_definitions": {}}],
                         [True], {}),
    },
    "fireworks-ai-firefunction-v1.jinja": {
        "functions_role": ([{"role": "functions", "content": json.dumps([WEATHER_TOOL["function"]], indent=4)},
                            SYSTEM,
                            {"role": "user", "content": "Weather in Paris?"},
                            {"role": "assistant", "content": None,
                             "tool_calls": [{"type": "function", "function": {
                                 "name": "get_weather", "arguments": "{\"location\": \"Paris\"}"}}]}],
                           None, [True], {}),
    },
}

# Inline templates for semantics that are easy to get wrong; rendered with transformers' environment.
SNIPPETS = {
    "float_repr": ("{{ 1.0 }} {{ 0.5 }} {{ 1e-05 }} {{ 0.0001 }} {{ 1e16 }} {{ 1e15 }} {{ 3.14159 }} {{ 2/3 }} "
                   "{{ [1.0, 2.5e-10] }} {{ 1e300 * 1e10 }} {{ -1e300 * 1e10 }}", {}),
    "floor_div_mod": ("{{ -7 // 2 }} {{ 7 // -2 }} {{ -7 % 2 }} {{ 7 % -2 }} {{ -7.0 // 2 }} {{ 5.5 % -2 }}", {}),
    "undefined_prints_empty": ("[{{ nothing }}][{{ msg.missing }}][{{ nothing | default('d') }}]"
                               "[{{ nothing is defined }}]", {"msg": {"a": 1}}),
    "loop_last": ("{% for x in items %}{{ x }}{% if not loop.last %}, {% endif %}{% endfor %}",
                  {"items": ["a", "b", "c"]}),
    "loop_scoping": ("{% set y = 0 %}{% for i in range(3) %}{{ y }}{% set y = i + 10 %}{% endfor %}|{{ y }}", {}),
    "trim_lstrip_blocks": ("<ul>\n    {% for x in items %}\n    <li>{{ x }}</li>\n    {% endfor %}\n</ul>\n",
                           {"items": [1, 2]}),
    "whitespace_control": ("a  \n  {%- if true -%}  \n  b  \n  {%- endif -%}  \n  c {{- ' d ' -}} e\n", {}),
    "plus_modifiers": ("x\n    {%+ if true %}y{% endif +%}\nz", {}),
    "comment_trim": ("a\n  {# c #}\nb {#- c -#} c", {}),
    "string_escapes": ("{{ 'a\\tb\\n\\'q\\' \\x41\\u00e9 \\\\ \\d' }}|{{ \"dq \\\" '\" }}|{{ 'adj' 'acent' }}", {}),
    "python_repr": ("{{ ['it\\'s', \"q\\\"\", 'both \\' \"', 'nl\\n', '\\x01', 'ü', '\\xa0'] }} {{ {'k': (1,)} }}", {}),
    "bool_int_mix": ("{{ true == 1 }} {{ false + 0 }} {{ [true] == [1] }} {{ 1 in [true] }}", {}),
    "getattr_prefers_methods": ("{{ d.items is callable }} {{ d['items'] }} {{ d.get('items') }} {{ d.values is callable }}",
                                {"d": {"items": "key-value", "values": [1]}}),
    "dict_iteration_order": ("{% for k in d %}{{ k }}{% endfor %} {{ d | tojson }}",
                             {"d": {"z": 1, "a": 2, "m": 3}}),
    "tojson_unicode": ("{{ s | tojson }} {{ s | tojson(ensure_ascii=true) }}", {"s": "é\u2028\u00a0\x7f<>&'\""}),
    "int_overflowless": ("{{ 2 ** 62 }} {{ 9007199254740993 }} {{ 10 / 4 }} {{ 9 / 3 }} {{ 1 / 0.5 }}", {}),
    "str_methods_unicode": ("{{ s | length }} {{ s[2] }} {{ s.upper() }} {{ s | title }} {{ s.split('é') }}",
                            {"s": "héllo wörld é"}),
    "macro_kwargs": ("{% macro m(a, b=2, c='x') %}{{ a }}-{{ b }}-{{ c }}{% endmacro %}"
                     "{{ m(1) }} {{ m(1, 3) }} {{ m(1, c='y') }} {{ m(a=5, b=6) }}", {}),
    "set_in_if_leaks": ("{% if true %}{% set v = 'in-if' %}{% endif %}{{ v }}", {}),
    "namespace_in_loop": ("{% set ns = namespace(n=0) %}{% for i in range(4) %}{% set ns.n = ns.n + i %}{% endfor %}"
                          "{{ ns.n }}", {}),
    "for_else_and_filter": ("{% for x in [] %}x{% else %}empty{% endfor %} "
                            "{% for x in [1, 2, 3, 4] if x is even %}{{ loop.index }}:{{ x }}/{{ loop.length }} "
                            "{% endfor %}", {}),
    "generation_block": ("{% generation %}kept {{ 1 }}{% endgeneration %}", {}),
    "slice_edge_cases": ("{{ [1,2,3][5:] }} {{ [1,2,3][-5:1] }} {{ 'abc'[::-2] }} {{ 'abc'[1:1] }} {{ [1,2,3][::-1] }}",
                         {}),
    "title_vs_method": ("{{ 'they\\'re bill\\'s-x' | title }} {{ 'they\\'re bill\\'s-x'.title() }}", {}),
    "selectattr_undefined_attr": ("{{ items | selectattr('x') | list }} {{ items | selectattr('x', 'defined') | list }}",
                                  {"items": [{"x": 1}, {"y": 2}, {"x": 0}]}),
    "items_filter_tuples": ("{% for pair in d | items %}{{ pair }}{% endfor %} {{ d | dictsort(reverse=true) }}",
                            {"d": {"b": 1, "a": [2]}}),
    "generator_truthiness": ("{{ 'yes' if ([] | select) else 'no' }} {{ [] | select | list | length }} "
                             "{% set g = [1, 2] | map('string') %}{{ g | join }}/{{ g | join }}", {}),
    "loop_cycle_changed": ("{% for x in [1, 1, 2] %}{{ loop.cycle('a', 'b') }}{{ loop.changed(x) }} {% endfor %}", {}),
    "nested_loops": ("{% for a in [1, 2] %}{% for b in 'xy' %}{{ loop.index }}{{ b }}{% endfor %}{{ loop.index }};"
                     "{% endfor %}", {}),
    "macro_varargs_kwargs": ("{% macro m(a) %}{{ a }}{{ varargs }}{{ kwargs }}{% endmacro %}{{ m(1, 2, 3, x=4) }} "
                             "{% macro n(a, b=a * 2) %}{{ b }}{% endmacro %}{{ n(5) }} {{ n.name if false }}", {}),
    "with_statement": ("{% with a = 1, b = 2 %}{{ a + b }}{% endwith %}{{ a is defined }}", {}),
    "format_filter_and_method": ("{{ '%s-%d' | format('a', 3) }} {{ '{}+{name}'.format(1, name='n') }} "
                                 "{{ '%.2f' % 3.14159 }} {{ '%s' % 'x' }}", {}),
    "int_float_filters": ("{{ '0x1A' | int(base=16) }} {{ ' 12 ' | int }} {{ '1_000' | int }} {{ 'abc' | float(1.5) }} "
                          "{{ '-3.9' | int }} {{ true | int }} {{ '1e3' | float }} {{ none | int }}", {}),
    "dictsort_by_value": ("{{ {'b': 2, 'a': 3, 'c': 1} | dictsort(by='value') }} "
                          "{{ {'B': 1, 'a': 2} | dictsort }} {{ {'B': 1, 'a': 2} | dictsort(true) }}", {}),
    "batch_unique_minmax": ("{{ [1, 2, 3, 4, 5] | batch(2) | list }} {{ [1, 2, 3] | batch(2, 'x') | list }} "
                            "{{ ['a', 'A', 'b'] | unique | list }} {{ ['a', 'A'] | unique(case_sensitive=true) | list }} "
                            "{{ items | max(attribute='n') }} {{ items | min(attribute='n') }} "
                            "{{ items | sum(attribute='n') }} {{ ['b', 'A', 'c'] | max }}",
                            {"items": [{"n": 2}, {"n": 7}, {"n": -1}]}),
    "map_and_join": ("{{ ['a b', 'c'] | map('replace', ' ', '_') | list }} "
                     "{{ items | map(attribute='missing', default='z') | list }} {{ items | join(', ', attribute='n') }} "
                     "{{ items | map(attribute='n') | map('string') | join('+') }}",
                     {"items": [{"n": 2}, {"n": 7}]}),
    "string_methods_more": ("{{ 'a,b,c'.rsplit(',', 1) }} {{ '  x  '.lstrip() }}|{{ '  x  '.rstrip() }}| "
                            "{{ 'Hello'.swapcase() }} {{ 'ab'.center(6, '*') }} {{ '42'.zfill(5) }} "
                            "{{ 'a=b=c'.partition('=') }} {{ 'a=b=c'.rpartition('=') }} {{ 'line1\\nline2'.splitlines() }} "
                            "{{ 'AbC'.isupper() }} {{ '123'.isdigit() }} {{ 'Title Case'.istitle() }} "
                            "{{ 'hello'.startswith('ell', 1) }} {{ 'hello'.find('l', 3) }} {{ 'hello'.rfind('l') }}", {}),
    "dict_access": ("{{ d.get('x', 5) }} {{ 'a' in d }} {{ d['a'] }} {{ d.a }} {{ d | length }} {{ d.keys() }} "
                    "{{ d.items() | list }} {{ d.values() | list }} {{ d['missing'] is defined }}", {"d": {"a": 1}}),
    "undefined_operations": ("{{ missing | length }} {{ missing | list }} {{ missing | trim }}|{{ missing ~ 'x' }} "
                             "{{ missing is iterable }} {{ missing is sequence }} {{ 'a' in missing }} "
                             "{{ missing | default(none) is none }} {% for x in missing %}never{% endfor %}", {}),
    "none_and_int_lookups": ("[{{ none.x }}][{{ none.x is defined }}][{{ 'abc'[5] }}][{{ 'abc'[5] is defined }}]"
                             "[{{ 5.x is defined }}][{{ [1][0:'a'] is defined }}]", {}),
    "list_and_tuple_methods": ("{{ [1, 2, 3].index(2) }} {{ (1, 2, 2).count(2) }} {{ [1, 2] | reverse | list }} "
                               "{{ {'a': 1, 'b': 2} | reverse | list }} {{ 'abc' | reverse }}", {}),
    "tojson_variants": ("{{ [1.0, -0.0, 1e100, 2 ** 62, true, none] | tojson }} "
                        "{{ {'a': [1, {'b': []}]} | tojson(indent='\\t') }} {{ {'a': 1} | tojson(indent=0) }} "
                        "{{ (1, 2) | tojson }} {{ {1: 'int key', none: 'n'} | tojson }}", {}),
    "comparisons_more": ("{{ 1 < 2.5 <= 3 }} {{ [1, 'a'] == [1, 'a'] }} {{ (1, 2) == [1, 2] }} {{ (1, 2) < (1, 3) }} "
                         "{{ 'B' < 'a' }} {{ none == none }} {{ missing == missing2 }} {{ 1 != 1.0 }}", {}),
    "sequence_ops": ("{{ (1,) + (2,) }} {{ [1] + [2] }} {{ 'ab' in ['ab'] }} {{ [1, [2]] | length }} "
                     "{{ [3, 1, 2] | sort(reverse=true) }} {{ items | sort(attribute='n') | map(attribute='n') | list }}",
                     {"items": [{"n": 2}, {"n": 1}]}),
    "whitespace_edge_cases": ("  {%- if true %}\n  a\n  {%- endif %}\n{% for i in [1, 2] -%}\n  {{ i }}\n{%- endfor %}\n"
                              "   {# comment #}   \n{{ 'x' }}   {%+ if true %}y{% endif %}\n\t{% if true %}tab{% endif %}\n", {}),
    "raw_block": ("{% raw %}{{ x }}\n{% if %}{% endraw %}|{%- raw -%}  padded  {%- endraw -%}  |", {}),
    "set_block_with_filter": ("{% set x | upper %}shout {{ 1 }}{% endset %}{{ x }} {% set y %}  {% endset %}[{{ y }}]", {}),
    "join_on_dict_and_string": ("{{ {'a': 1, 'b': 2} | join(',') }} {{ 'abc' | join('-') }} {{ [1, none] | join }}", {}),
    "truthiness": ("{% for v in [0, 0.0, '', [], {}, none, 'x', [0], {'a': 0}, 1] %}{{ 'T' if v else 'F' }}{% endfor %}", {}),
    "capitalize_title_unicode": ("{{ 'élan VITAL' | capitalize }} {{ 'straße' | upper }} {{ 'ΑΒΓ' | lower }} "
                                 "{{ 'ünïcode wörds' | title }} {{ 'привет мир'.title() }}", {}),
    "for_else_after_break_or_continue": ("{% for x in [1, 2] %}{% break %}{% else %}else-ran{% endfor %}|"
                                         "{% for x in [1] %}{% continue %}{% else %}again{% endfor %}|"
                                         "{% for x in [1] %}{{ x }}{% else %}no{% endfor %}", {}),
    "break_inside_set_block": ("{% for x in [1, 2, 3] %}{% set y %}<{{ x }}>{% if x == 2 %}{% break %}{% endif %}"
                               "{% endset %}{{ y }}{% endfor %}", {}),
    "markup_concatenation": ("{{ ('<b>' | safe) + '<i>' }} {{ '<i>' + ('<b>' | safe) }} {{ '<b>' | e }} "
                             "{{ '<b>' | safe | e }} {{ ('x' | safe) ~ '<' }} {{ ('<' | safe) * 2 }}", {}),
    "percent_with_mapping_args": ("{{ 'plain' % [1] }} {{ '%(a)s!' % {'a': 1} }} {{ 'x' % missing }} {{ '%s|%r' % ('a', 'b') }}",
                                  {}),
    "select_map_on_falsy_input": ("{{ 0 | select | list }} {{ none | map('upper') | list }} "
                                  "{{ false | selectattr('a') | list }} {{ '' | reject | list }}", {}),
    # Runtime errors: the C++ message must contain jinja2's.
    "err_raise_exception": ("{{ raise_exception('Bad role: ' ~ role) }}", {"role": "narrator"}),
    "err_undefined_attr_of_undefined": ("{{ missing.attr }}", {}),
    "err_attr_of_missing_key": ("{{ msg.nope.deeper }}", {"msg": {"a": 1}}),
    "err_missing_element": ("{{ items[3].role }}", {"items": [1]}),
    "err_str_plus_int": ("{{ 'a' + 1 }}", {}),
    "err_str_plus_list": ("{{ 'a' + items }}", {"items": [1]}),
    "err_int_plus_str": ("{{ 1 + 'a' }}", {}),
    "err_str_plus_undefined": ("{{ 'a' + msg.content }}", {"msg": {"role": "user"}}),
    "err_iterate_none": ("{% for x in none %}{% endfor %}", {}),
    "err_length_of_none": ("{{ none | length }}", {}),
    "err_compare_mixed": ("{{ 1 < 'a' }}", {}),
    "err_range_too_big": ("{% for i in range(100000000) %}{{ i }}{% endfor %}", {}),
    "err_call_undefined": ("{{ nothing() }}", {}),
    "err_unsafe_mutation": ("{% set xs = [1] %}{{ xs.append(2) }}", {}),
    "err_namespace_missing_attr": ("{% set ns = namespace() %}{{ ns.missing.x }}", {}),
    "err_unknown_filter_runtime": ("{% if false %}{{ 1 | no_such_filter }}{% endif %}", {}),
    "err_tuple_plus_list": ("{{ (1,) + [2] }}", {}),
    "err_macro_too_many_args": ("{% macro m(a) %}{% endmacro %}{{ m(1, 2) }}", {}),
    "err_macro_unknown_kwarg": ("{% macro m(a) %}{% endmacro %}{{ m(b=1) }}", {}),
    "err_not_callable": ("{{ 'abc'() }}", {}),
    "err_unpack_in_for": ("{% for a, b in [[1]] %}{% endfor %}", {}),
    "err_unpack_in_set": ("{% set a, b = [1, 2, 3] %}", {}),
    "err_unhashable_key": ("{{ {[1]: 2} }}", {}),
    "err_division_by_zero": ("{{ 1 / 0 }}", {}),
    "err_floor_division_by_zero": ("{{ 1 // 0 }}", {}),
    "err_modulo_by_zero": ("{{ 1 % 0 }}", {}),
    "err_namespace_underscore": ("{% set ns = namespace() %}{% set ns._x = 1 %}", {}),
    "err_set_attr_on_dict": ("{% set d = {} %}{% set d.x = 1 %}", {}),
    "err_range_float": ("{{ range(1.5) }}", {}),
    "err_first_of_none": ("{{ none | first }}", {}),
    "err_in_none": ("{{ 'a' in none }}", {}),
    "err_int_in_string": ("{{ 1 in 'abc' }}", {}),
    "err_caller_missing": ("{% macro m() %}{{ caller() }}{% endmacro %}{{ m() }}", {}),
    "err_loop_previtem": ("{% for x in [1] %}{{ loop.previtem + 1 }}{% endfor %}", {}),
    "err_inline_if_without_else": ("{{ (1 if false) + 1 }}", {}),
    "err_tojson_undefined": ("{{ missing | tojson }}", {}),
    "err_str_join_int": ("{{ ', '.join([1, 2]) }}", {}),
    "err_split_empty_separator": ("{{ 'a'.split('') }}", {}),
    "err_index_not_found": ("{{ [1].index(2) }}", {}),
    "err_gt_mixed": ("{{ 1 > 'a' }}", {}),
    "err_le_mixed_lists": ("{{ [1] <= ['a'] }}", {}),
    "err_unary_minus_str": ("{{ -'a' }}", {}),
    "err_multiply_str_float": ("{{ 'a' * 1.5 }}", {}),
    "err_dictsort_list": ("{{ [1] | dictsort }}", {}),
    "err_items_of_list": ("{{ [1] | items | list }}", {}),
    "err_last_of_generator": ("{{ [1] | select | last }}", {}),
    "err_length_of_generator": ("{{ [1] | select | length }}", {}),
    "err_unknown_test": ("{{ 1 is frobbable }}", {}),
    "err_unknown_filter": ("{{ 1 | frobnicate }}", {}),
    "err_undefined_in_arithmetic": ("{{ missing + 1 }}", {}),
    "err_undefined_comparison": ("{{ missing < 1 }}", {}),
    "err_int_of_undefined": ("{{ missing | int }}", {}),
    "err_namespace_not_subscriptable_deep": ("{% set ns = namespace(a=1) %}{{ ns['a'] }}{{ ns.b.c }}", {}),
    "err_raise_non_string": ("{{ raise_exception(['a', 1]) }}", {}),
    "err_max_of_mixed_types": ("{{ ['v', 1] | max }}", {}),
    "err_indent_of_list": ("{{ [] | indent }}", {}),
    "err_markup_plus_int": ("{{ ('a' | safe) + 1 }}", {}),
    "err_pow_types": ("{{ 'a' ** 2 }}", {}),
    "err_reverse_of_int": ("{{ 5 | reverse }}", {}),
    # Syntax errors: the C++ error must name jinja2's line.
    "syntax_unclosed_for": ("line1\n{% for x in y %}\n{{ x }}\n", {}),
    "syntax_unknown_tag": ("ok\n\n{% frobnicate %}", {}),
    "syntax_bad_expression": ("{{ 1 + }}", {}),
    "syntax_unclosed_variable": ("a\nb {{ x ", {}),
    "syntax_unclosed_string": ("{{ 'abc }}", {}),
    "syntax_endif_without_if": ("x\n{% endif %}", {}),
    "syntax_unclosed_comment": ("a\n{# never closed", {}),
    "syntax_else_twice": ("{% if a %}{% else %}{% else %}{% endif %}", {}),
}


class RecordingTemplate:
    """Stands in for the compiled template so that the exact render() arguments can be recorded."""

    def __init__(self, inner):
        self.inner = inner
        self.contexts = []

    def render(self, **kwargs):
        self.contexts.append(json.loads(json.dumps(kwargs, ensure_ascii=False)))
        return self.inner.render(**kwargs)


def error_record(exc):
    record = {"error": str(exc), "error_type": type(exc).__name__}
    if isinstance(exc, jinja2.TemplateSyntaxError):
        record["error_line"] = exc.lineno
    return record


def render_case(template_text, messages, tools, add_generation_prompt, extra):
    real_compile = ctu._compile_jinja_template
    recorder = {}

    def compile_and_record(source):
        recorder["t"] = RecordingTemplate(real_compile(source))
        return recorder["t"]

    ctu._compile_jinja_template = compile_and_record
    try:
        rendered, _ = ctu.render_jinja_template(
            conversations=[json.loads(json.dumps(messages))], tools=tools, chat_template=template_text,
            add_generation_prompt=add_generation_prompt, bos_token="<s>", eos_token="</s>", **extra)
        result = {"output": rendered[0]}
    except Exception as exc:  # every failure is data: the C++ engine must fail the same way
        result = error_record(exc)
    finally:
        ctu._compile_jinja_template = real_compile
    contexts = recorder["t"].contexts if "t" in recorder else []
    if len(contexts) != 1:
        sys.exit(f"expected exactly one render call, got {len(contexts)}")
    return contexts[0], result


def render_snippet(source, context):
    try:
        template = ctu._compile_jinja_template(source)
    except jinja2.TemplateSyntaxError as exc:
        return error_record(exc)
    try:
        return {"output": template.render(**context)}
    except Exception as exc:
        return error_record(exc)


def main():
    cases = []
    for path in sorted(HERE.glob("*.jinja")):
        text = path.read_text(encoding="utf-8")
        conversations = dict(CONVERSATIONS)
        conversations.update(TEMPLATE_CONVERSATIONS.get(path.name, {}))
        for conv_name, (messages, tools, prompts, extra) in conversations.items():
            for add_generation_prompt in prompts:
                context, result = render_case(text, messages, tools, add_generation_prompt, extra)
                cases.append({"template": path.name, "conversation": conv_name, "context": context, **result})
    for name, (source, context) in SNIPPETS.items():
        cases.append({"snippet": name, "source": source, "context": context, **render_snippet(source, context)})
    golden = {
        "generated_by": "tests/data/chat_templates/make_chat_golden.py",
        "transformers_version": transformers.__version__,
        "jinja2_version": jinja2.__version__,
        "cases": cases,
    }
    out = HERE / "golden.json"
    out.write_text(json.dumps(golden, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    errors = sum(1 for c in cases if "error" in c)
    print(f"wrote {out}: {len(cases)} cases ({errors} errors)")


if __name__ == "__main__":
    main()
