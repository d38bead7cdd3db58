"""PostgreSQL: a group commit's deferred writes in as few statements as they allow.

flush_deferred (bizmsg.kit.prepared) writes what a batch's works deferred: their new rows by
statement, then the counts they added to (Tally). One executemany per statement costs a round
trip each, and the server runs every row as a statement of its own (bind, execute, its
executor started and ended). Here each of those statements becomes one that takes its rows as
arrays (an INSERT ... SELECT FROM unnest(...), a Tally's UPDATE ... FROM unnest(...)), and
the statements go in together as the parts of one WITH statement. Measured on delivery's flush
(a batch of 10 sends: the stored answers, messages, envelopes, events, the pairs' counters, the
sender's sequence and the business's count): 7 round trips became 2 (the pairs' counters and
the business's count are both rate_counters rows, see below), and client plus server CPU per
message fell from about 290-330 us to 200-230 us (a throwaway asyncpg replay of all seven in
one statement).

A part whose rows cannot go in as one statement is left out, and flush_deferred runs it
row by row as before:
- a statement with RETURNING, or a bound value whose type is not known;
- an upsert whose ON CONFLICT clause takes a value that differs between the rows (that clause
  cannot see the arrays' rows, only `excluded` and the table; a value the same for all rows is
  bound once);
- an upsert that updates on conflict, when two rows name the same key: PostgreSQL refuses to
  change one row twice in one statement, where the rows one by one add up.
The parts of one statement all see the database as it was before it and cannot see each
other's changes: when two parts change the same row one of the changes is lost without an
error, and an upsert does not see a row a sibling part inserts. So a part that changes existing
rows (an UPDATE, an upsert's DO UPDATE) is the only part on its table in its statement; the
others go in the next one. Plain inserts share a statement freely: a key inserted twice still
fails.
Errors are the same as row by row: a duplicate key is an IntegrityError, and the batch runs
again work by work, deferring nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Insert, Update, bindparam, func, literal_column, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql import visitors
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.types import ARRAY, TypeEngine


@dataclass(frozen=True)
class Part:
    """One deferred statement's rows (all with the same keys), to write together.
    `distinct`: the rows change different rows of the table (a Tally's counts), which an
    UPDATE needs to go in as one statement."""

    stmt: Any  # the statement for PostgreSQL
    sql: str  # as compiled, for writing the rows one by one
    names: tuple[str, ...]  # its parameters, in the order of `rows`' values
    rows: list[list[Any]]  # each row's parameter values, processed for the driver
    key: Any  # what identifies the statement and its parameters, for the cache
    distinct: bool = False


@dataclass(frozen=True)
class _Shape:
    """A statement rewritten to take its rows as arrays."""

    table: Any
    changes: bool  # whether it changes existing rows (UPDATE, DO UPDATE)
    per_row: dict[str, TypeEngine[Any]]  # parameters bound as arrays, with their types
    scalar: tuple[str, ...]  # parameters bound once (the same for every row)
    conflict: tuple[str, ...]  # the parameters that name a DO UPDATE's key
    build: Callable[[str], Any]  # (prefix) -> the statement, its parameters named prefix + name


def _binds(element: Any) -> list[BindParameter[Any]]:
    return [b for b in visitors.iterate(element) if isinstance(b, BindParameter) and b.required]


def _typed(column: Any, expr: Any) -> dict[str, TypeEngine[Any]]:
    """The required parameters of one SET or VALUES expression with their types: a bare
    parameter has the column's type when it has none of its own."""
    found: dict[str, TypeEngine[Any]] = {}
    for b in _binds(expr):
        found[b.key] = column.type if b is expr and b.type._isnull else b.type
    return found


def _shape(stmt: Any, names: Sequence[str], distinct: bool) -> _Shape | None:
    """`stmt` (its parameters `names`) rewritten to take its rows as arrays, or None when it
    cannot be (see the module's docstring)."""
    if getattr(stmt, "_returning", ()) or not isinstance(stmt, (Insert, Update)):
        return None
    table = stmt.table
    values = {(table.c[c] if isinstance(c, str) else c): e for c, e in (stmt._values or {}).items()}
    if isinstance(stmt, Insert) and not values:  # table.insert(): every parameter is a column
        values = {table.c[n]: bindparam(n, type_=table.c[n].type) for n in names}
    per_row: dict[str, TypeEngine[Any]] = {}
    for column, expr in values.items():
        per_row.update(_typed(column, expr))
    post: Any = stmt._post_values_clause if isinstance(stmt, Insert) else None
    scalar = tuple(dict.fromkeys(b.key for b in _binds(post))) if post is not None else ()
    conflict: tuple[str, ...] = ()
    changes = isinstance(stmt, Update) or isinstance(post, postgresql.dml.OnConflictDoUpdate)
    if isinstance(stmt, Update):
        if not distinct:
            return None
        for b in _binds(stmt.whereclause):
            per_row.setdefault(b.key, b.type)
    elif changes:
        targets = post.inferred_target_elements or []
        by_column = {c.key: e for c, e in values.items()}
        for target in targets:
            expr = by_column.get(target if isinstance(target, str) else target.key)
            if not isinstance(expr, BindParameter):
                return None  # the key is not a plain parameter: duplicates cannot be told
            conflict += (expr.key,)
        if not targets:
            return None
    for name in scalar:
        per_row.pop(name, None)
    if any(t._isnull for t in per_row.values()) or (set(per_row) | set(scalar)) - set(names):
        return None

    def build(prefix: str) -> Any:
        arrays = [bindparam(f"{prefix}{n}", type_=ARRAY(t)) for n, t in per_row.items()]
        rows = func.unnest(*arrays).table_valued(*per_row).render_derived(name=f"{prefix}rows")

        def replace(element: Any) -> Any:
            if isinstance(element, BindParameter) and element.required:
                if element.key in per_row:
                    return rows.c[element.key]
                return bindparam(f"{prefix}{element.key}", type_=element.type)
            return None

        def swap(element: Any) -> Any:
            return visitors.replacement_traverse(element, {}, replace)  # type: ignore[call-overload]

        if isinstance(stmt, Update):
            return swap(stmt)
        source = select(*[swap(e) for e in values.values()]).select_from(rows)
        new = postgresql.insert(table).from_select(list(values), source)
        if post is not None:
            new._post_values_clause = swap(post)
        return new

    return _Shape(table, changes, per_row, scalar, conflict, build)


_shapes: dict[Any, _Shape | None] = {}


def _shape_of(part: Part) -> _Shape | None:
    key = (part.key, part.distinct)
    if key not in _shapes:
        _shapes[key] = _shape(part.stmt, part.names, part.distinct)
    return _shapes[key]


def _fits(shape: _Shape, part: Part) -> bool:
    """Whether the part's rows go in as one statement: its once-bound values agree, and a DO
    UPDATE's keys differ."""
    index = {n: i for i, n in reversed(list(enumerate(part.names)))}
    first = part.rows[0]
    for name in shape.scalar:
        i = index[name]
        if any(row[i] != first[i] for row in part.rows):
            return False
    if shape.conflict:
        at = [index[n] for n in shape.conflict]
        keys = {tuple(row[i] for i in at) for row in part.rows}
        if len(keys) < len(part.rows):
            return False
    return True


@dataclass(frozen=True)
class Statement:
    """One statement that writes several parts: its SQL and how to fill its parameters."""

    sql: str
    # Per positional parameter: (part number, its parameter's index, whether an array), or
    # (None, the value, False) for a value fixed in the statement.
    slots: tuple[tuple[int | None, Any, bool], ...]

    def args(self, parts: Sequence[Part]) -> list[Any]:
        out: list[Any] = []
        for number, at, array in self.slots:
            if number is None:
                out.append(at)
            elif array:
                out.append([row[at] for row in parts[number].rows])
            else:
                out.append(parts[number].rows[0][at])
        return out


# By the parts' statements and keys; a service makes a few dozen (which statements a batch
# defers varies), but nothing else bounds them: past this many the cache starts again.
_statements: dict[tuple[Any, ...], Statement] = {}
_MOST_STATEMENTS = 512


def _clash(one: _Shape, other: _Shape) -> bool:
    """Whether two parts must go in statements of their own (see the module's docstring)."""
    return one.table is other.table and (one.changes or other.changes)


def plan(parts: Sequence[Part]) -> tuple[list[tuple[Statement, list[Part]]], list[Part]]:
    """The statements that write `parts` (each with the parts it writes, in order), and the
    parts left to write row by row."""
    alone: list[Part] = []
    rounds: list[list[tuple[Part, _Shape]]] = []
    for part in parts:
        shape = _shape_of(part)
        if shape is None or not _fits(shape, part):
            alone.append(part)
            continue
        for taken in rounds:
            if all(not _clash(s, shape) for _, s in taken):
                taken.append((part, shape))
                break
        else:
            rounds.append([(part, shape)])
    out = []
    for taken in rounds:
        key = tuple((p.key, p.distinct) for p, _ in taken)
        statement = _statements.get(key)
        if statement is None:
            if len(_statements) >= _MOST_STATEMENTS:
                _statements.clear()
            statement = _statements[key] = _compile([(p, s) for p, s in taken])
        out.append((statement, [p for p, _ in taken]))
    return out, alone


def _compile(taken: Sequence[tuple[Part, _Shape]]) -> Statement:
    built = [shape.build(f"p{i}_") for i, (_, shape) in enumerate(taken)]
    if len(built) == 1:
        stmt = built[0]
    else:
        stmt = select(literal_column("1")).add_cte(*[b.cte(f"w{i}") for i, b in enumerate(built)])
    compiled = stmt.compile(dialect=postgresql.asyncpg.dialect())  # type: ignore[no-untyped-call]
    slots: list[tuple[int | None, Any, bool]] = []
    for name in compiled.positiontup or ():
        bind = compiled.binds[name]
        if not bind.required:  # a literal of the statement
            process = compiled._bind_processors.get(name)
            value = bind.effective_value
            slots.append((None, process(value) if process else value, False))
            continue
        number_text, _, own = name[1:].partition("_")
        number = int(number_text)
        part, shape = taken[number]
        at = part.names.index(own)
        slots.append((number, at, own in shape.per_row))
    return Statement(str(compiled), tuple(slots))
