"""What every operations service shares: ledger accounts by role (with the accounts operations
adds to a business's chart), the open-day check, VAT. Netting journal lines is the ledger's
(accounts/journal.py).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, TypeVar

import psycopg
from django.db import DEFAULT_DB_ALIAS, connection, connections, models, transaction
from django.db.backends.utils import CursorDebugWrapper, CursorWrapper
from django.db.models import Field, Model
from django.utils import timezone

from accounts.fields import CENT, ZERO
from accounts.journal import Roles as LedgerRoles
from accounts.models import Account, AccountType
from accounts.selectors import books_lock_date
from operations.exceptions import DayClosed, InvalidInput
from operations.models import VAT_PERCENT, Item
from tenancy.models import Business

ModelT = TypeVar("ModelT", bound=Model)


@dataclass(frozen=True)
class ExtraAccount:
    code: str
    name: str
    type: str
    role: str


# Roles operations needs that the default charts (accounts/charts.py) do not seed. They are added
# as top-level leaf accounts by chart_operations_ensure; tell the ledger's owner to fold them in.
EXTRA_ACCOUNTS: tuple[ExtraAccount, ...] = (
    ExtraAccount("2300", "Customer deposits on open orders", AccountType.LIABILITY, "customer_deposits"),
    ExtraAccount("5100", "Stock count differences", AccountType.EXPENSE, "stock_variance"),
)


def chart_operations_ensure(*, business: Business) -> None:
    """Add the accounts operations posts to that the default chart lacks (see EXTRA_ACCOUNTS).

    Idempotent: an account whose role exists is left alone; a taken code gets the next free one.
    """
    with transaction.atomic():
        existing = set(Account.objects.filter(business=business).values_list("role", flat=True))
        codes = set(Account.objects.filter(business=business).values_list("code", flat=True))
        for spec in EXTRA_ACCOUNTS:
            if spec.role in existing:
                continue
            code = spec.code
            while code in codes:
                code = str(int(code) + 1)
            Account.objects.create(business=business, code=code, name=spec.name, type=spec.type, role=spec.role)
            codes.add(code)


class Roles(LedgerRoles):
    """The ledger's accounts by role, with the accounts operations adds (EXTRA_ACCOUNTS) ensured.

    `ids`: the accounts by role already read (books_open reads them with the lock date); else
    they are read here, in one query.
    """

    def __init__(self, business: Business, ids: dict[str, int] | None = None) -> None:
        self._preloaded = ids
        super().__init__(business)
        if any(spec.role not in self._ids for spec in EXTRA_ACCOUNTS):
            chart_operations_ensure(business=business)
            self._ids = super()._load()

    def _load(self) -> dict[str, int]:
        if self._preloaded is not None:
            ids, self._preloaded = self._preloaded, None
            return ids
        return super()._load()

    def missing(self, role: str) -> Exception:
        return InvalidInput(f"{self.business} has no ledger account for {role!r}; ask the accountant")


class OpenBooks:
    """What a posting service reads before it writes, in one query (books_read): the business's
    lock date, its accounts by role (`roles`, built when first used) and the primary key reserved
    for the document it is about to insert, if it asked for one."""

    def __init__(
        self, business: Business, *, lock_date: dt.date | None, role_ids: dict[str, int], reserved_id: int | None
    ) -> None:
        self.business = business
        self.lock_date = lock_date
        self.reserved_id = reserved_id
        self._role_ids = role_ids
        self._roles: Roles | None = None

    @property
    def roles(self) -> Roles:
        if self._roles is None:
            self._roles = Roles(self.business, self._role_ids)
        return self._roles


# One round trip: the lock date, the accounts by role, and optionally the next value of a table's
# primary-key sequence (the document's number is then known before its row is written).
_BOOKS_SQL = """
SELECT (SELECT b.lock_date FROM accounts_books b WHERE b.business_id = %(business)s),
       ARRAY(SELECT a.role FROM accounts_account a WHERE a.business_id = %(business)s AND a.role <> '' ORDER BY a.id),
       ARRAY(SELECT a.id FROM accounts_account a WHERE a.business_id = %(business)s AND a.role <> '' ORDER BY a.id),
       CASE WHEN %(table)s::text IS NULL THEN NULL
            ELSE nextval(pg_get_serial_sequence(%(table)s::text, %(column)s::text)) END
"""


def books_read(business: Business, *, reserve_id_of: type[Model] | None = None) -> OpenBooks:
    """The business's lock date and accounts by role, in one query, read afresh at each call (so
    nothing is cached across requests or processes). `reserve_id_of`: a model whose next primary
    key to reserve (nextval of its sequence): the document is then inserted with that pk, once,
    with its entry, instead of inserted and updated; a rolled-back transaction leaves a gap in the
    numbers, as a rolled-back insert does."""
    return books_send(business, reserve_id_of=reserve_id_of)()


def books_send(business: Business, *, reserve_id_of: type[Model] | None = None) -> Callable[[], OpenBooks]:
    """books_read in two steps: the statement is sent now (inside `pipelined()`, with the others),
    the function returned reads its result."""
    table = column = None
    if reserve_id_of is not None:
        table, column = reserve_id_of._meta.db_table, reserve_id_of._meta.pk.column
    cursor = cursor_prepared()
    cursor.execute(_BOOKS_SQL, {"business": business.pk, "table": table, "column": column})

    def result() -> OpenBooks:
        with cursor:
            lock_date, roles, ids, reserved_id = cursor.fetchone()
        return OpenBooks(
            business, lock_date=lock_date, role_ids=dict(zip(roles, ids, strict=True)), reserved_id=reserved_id
        )

    return result


@contextmanager
def pipelined() -> Iterator[None]:
    """The statements sent inside the block (books_send, rows_send) go to PostgreSQL together, in
    one round trip (psycopg's pipeline mode; with the BEGIN of the transaction when they start it),
    and run one after the other in that order, as they would one by one. Their results are read
    after the block. An error of any of them is raised at the end of the block (as Django's
    DatabaseError), and the ones after it are not run."""
    db = connections[DEFAULT_DB_ALIAS]
    db.ensure_connection()
    with db.wrap_database_errors, db.connection.pipeline():
        yield


def books_open(business: Business, day: dt.date, *, reserve_id_of: type[Model] | None = None) -> OpenBooks:
    """books_read, and `day` checked open for `business` (day_open_check) with the lock date it read.
    Call it inside the posting's transaction."""
    books = books_read(business, reserve_id_of=reserve_id_of)
    day_open_at(business, day, books.lock_date)
    return books


def items_read(item_ids: Iterable[int], *, linked: Sequence[str] = ()) -> dict[int, Item]:
    """The catalogue items by id, as they are now, with the items they link to (`linked`: the names
    of their foreign keys to other items, e.g. "stock_item", "returns_item") set on them.

    One plain query (no joins, no ordering); a second one only when a linked item is not among
    those read (an LPG refill's full and empty cylinders)."""
    items = {item.pk: item for item in rows_read(Item, "id = ANY(%s::bigint[])", [list(set(item_ids))])}
    wanted = {getattr(item, f"{name}_id") for item in items.values() for name in linked} - {None} - items.keys()
    others = {item.pk: item for item in rows_read(Item, "id = ANY(%s::bigint[])", [list(wanted)])} if wanted else {}
    return _items_linked(items, others, linked)


def _items_linked(items: dict[int, Item], others: dict[int, Item], linked: Sequence[str]) -> dict[int, Item]:
    for item in items.values():
        for name in linked:
            linked_id = getattr(item, f"{name}_id")
            if linked_id is not None:
                setattr(item, name, items.get(linked_id) or others[linked_id])
    return items


# The items asked for and the items they link to as stock_item / returns_item, in one statement.
_ITEMS_LINKED_WHERE = """id = ANY(%(ids)s::bigint[]) OR id IN (
  SELECT i.stock_item_id FROM operations_item i WHERE i.id = ANY(%(ids)s::bigint[])
  UNION ALL SELECT i.returns_item_id FROM operations_item i WHERE i.id = ANY(%(ids)s::bigint[]))"""


def items_send(item_ids: Iterable[int]) -> Callable[[], dict[int, Item]]:
    """items_read(item_ids, linked=("stock_item", "returns_item")) in two steps, one statement
    (the linked items read with the others): sent now (inside `pipelined()`), read by the
    function returned."""
    ids = list(set(item_ids))
    later = rows_send(Item, _ITEMS_LINKED_WHERE, {"ids": ids})

    def result() -> dict[int, Item]:
        read = {item.pk: item for item in later()}
        wanted = set(ids)
        items = {pk: item for pk, item in read.items() if pk in wanted}
        others = {pk: item for pk, item in read.items() if pk not in wanted}
        return _items_linked(items, others, ("stock_item", "returns_item"))

    return result


def cursor_prepared() -> CursorWrapper:
    """A cursor on Django's connection (same transaction) that binds parameters server-side, so
    psycopg prepares a statement once it has run it `prepare_threshold` times on the connection
    (settings.py; DB_PREPARED_STATEMENTS=0 turns it off): PostgreSQL then neither parses nor plans
    it again. Django's own cursors bind client-side and are never prepared. Still Django's
    wrapper: errors are Django's, and the statements are logged and counted as Django's are."""
    db = connections[DEFAULT_DB_ALIAS]
    db.ensure_connection()
    raw = psycopg.Cursor(db.connection)
    return _PreparedDebugCursor(raw, db) if db.queries_logged else CursorWrapper(raw, db)


class _PreparedDebugCursor(CursorDebugWrapper):
    """Django's debug cursor, logging the statement as written (psycopg keeps no text of a
    prepared statement's execution to show with its parameters)."""

    @contextmanager
    def debug_sql(
        self, sql: Any = None, params: Any = None, use_last_executed_query: bool = False, many: bool = False
    ) -> Iterator[None]:
        with super().debug_sql(sql, params, use_last_executed_query=False, many=many):
            yield


_READ_SQL: dict[tuple[type[Model], str, str], tuple[str, list[str]]] = {}


def rows_read(model: type[ModelT], where: str, params: Sequence[Any], *, lock: str = "") -> list[ModelT]:
    """The rows of `model` matching `where` (SQL on its columns), as model instances, in one
    prepared statement (cursor_prepared) without the ORM's query building: for the reads every
    posting makes. `lock`: e.g. "ORDER BY id FOR UPDATE"."""
    return rows_send(model, where, params, lock=lock)()


def rows_send(
    model: type[ModelT], where: str, params: Sequence[Any] | dict[str, Any], *, lock: str = ""
) -> Callable[[], list[ModelT]]:
    """rows_read in two steps: the statement is sent now (inside `pipelined()`, with the others),
    the function returned reads its rows."""
    sql, names = _read_sql(model, where, lock)
    cursor = cursor_prepared()
    cursor.execute(sql, params)

    def result() -> list[ModelT]:
        with cursor:
            return [model.from_db(DEFAULT_DB_ALIAS, names, row) for row in cursor.fetchall()]

    return result


def _read_sql(model: type[Model], where: str, lock: str) -> tuple[str, list[str]]:
    """The statement rows_read runs for `model`, `where` and `lock`, and the attnames of its columns
    (built once)."""
    key = (model, where, lock)
    if key not in _READ_SQL:
        fields = model._meta.concrete_fields
        columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
        table = connection.ops.quote_name(model._meta.db_table)
        sql = f"SELECT {columns} FROM {table} WHERE {where} {lock}"  # noqa: S608 - names from the model, `where` from code
        _READ_SQL[key] = (sql, [f.attname for f in fields])
    return _READ_SQL[key]


def array_literal(values: Iterable[Any]) -> str:
    """A PostgreSQL array literal of `values` (None is NULL; anything else by its text, quoted): one
    string parameter cast by the statement, far cheaper to send than psycopg's adaptation of a list."""
    return (
        "{"
        + ",".join(
            "NULL" if value is None else '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
            for value in values
        )
        + "}"
    )


# (insert?, model, fields) of each part of a Writes -> the statement and, per part, how to read
# each of its fields' database value from a row (value_reader).
_WRITE_SQL: dict[tuple[tuple[bool, type[Model], tuple[str, ...]], ...], str] = {}
_WRITE_FIELDS: dict[tuple[bool, type[Model], tuple[str, ...]], list[Field[Any, Any]]] = {}
_WRITE_READERS: dict[tuple[bool, type[Model], tuple[str, ...]], list[Callable[[Model], Any]]] = {}

# Django's field classes whose database value (pre_save, then get_db_prep_save on PostgreSQL) is
# the attribute itself when it holds a value of these types (or None), provided a subclass
# overrides none of those methods and the field has no auto_now / auto_now_add.
_AS_IS: tuple[tuple[type[Field[Any, Any]], tuple[type, ...]], ...] = (
    (models.CharField, (str,)),
    (models.TextField, (str,)),
    (models.DecimalField, (Decimal,)),
    (models.DateTimeField, ()),  # a naive datetime is made aware on the way: always the long way
    (models.DateField, (dt.date,)),
    (models.BooleanField, (bool,)),
    (models.BigAutoField, (int,)),
    (models.AutoField, (int,)),
    (models.IntegerField, (int,)),
)
_PREP_METHODS = ("pre_save", "get_db_prep_save", "get_db_prep_value", "get_prep_value", "to_python")


def _types_as_is(field: Field[Any, Any]) -> tuple[type, ...] | None:
    """The types of value `field` writes as they are (see _AS_IS), else None."""
    if getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
        return None
    if isinstance(field, models.ForeignKey):  # a key to an integer primary key: the id itself
        target = field.target_field
        plain = all(getattr(type(field), name) is getattr(models.ForeignKey, name) for name in _PREP_METHODS)
        return (int,) if plain and _types_as_is(target) == (int,) else None
    for base, types in _AS_IS:
        if isinstance(field, base):
            plain = all(getattr(type(field), name) is getattr(base, name) for name in _PREP_METHODS)
            return types if plain and types else None
    return None


def value_reader(field: Field[Any, Any], add: bool) -> Callable[[Model], Any]:
    """A function giving what save() writes for `field` of a row: `pre_save` (auto_now_add...)
    then `get_db_prep_save`. For the plain field classes of _AS_IS that is the attribute itself
    when it holds a value of the field's type (a str, a Decimal, a date, an int id...), read
    without the four Django calls per value; any other value goes through them."""
    db = connections[DEFAULT_DB_ALIAS]

    def prepared(row: Model) -> Any:
        return field.get_db_prep_save(field.pre_save(row, add), db)

    types = _types_as_is(field)
    if types is None:
        return prepared
    attname = field.attname
    exact = types != (str,)  # a str subclass (a TextChoices member) writes its value, as str() gives it

    def as_is(row: Model) -> Any:
        value = getattr(row, attname)
        if value is None or (type(value) in types if exact else isinstance(value, str)):
            return value
        return prepared(row)

    return as_is


def _write_sql(shape: tuple[tuple[bool, type[Model], tuple[str, ...]], ...]) -> str:
    db = connections[DEFAULT_DB_ALIAS]
    quote = db.ops.quote_name
    ctes, returning = [], []
    for n, (insert, model, _names) in enumerate(shape):
        fields = _WRITE_FIELDS[shape[n]]
        table, pk = quote(model._meta.db_table), quote(model._meta.pk.column)
        arrays = ", ".join(f"%s::{f.db_type(db)}[]" for f in fields)
        columns = ", ".join(quote(f.column) for f in fields)
        if insert:
            ctes.append(f"w{n} AS (INSERT INTO {table} ({columns}) SELECT * FROM unnest({arrays}) RETURNING {pk})")  # noqa: S608
            if not fields[0].primary_key:
                returning.append(f"SELECT {n}, {pk} FROM w{n}")  # noqa: S608
        else:
            sets = ", ".join(f"{quote(f.column)} = v.{quote(f.column)}" for f in fields[1:])
            update = f"UPDATE {table} AS t SET {sets} FROM unnest({arrays}) AS v({columns}) WHERE t.{pk} = v.{pk}"  # noqa: S608
            ctes.append(f"w{n} AS ({update})")
    main = " UNION ALL ".join(returning) or "SELECT NULL::int, NULL::bigint WHERE false"
    return f"WITH {', '.join(ctes)} {main}"


class Writes:
    """Rows to insert and rows to update, written by `run` in one statement (one round trip, one
    prepared statement per shape): each table's rows go in as one array per column (unnest), so the
    text does not depend on the number of rows. What Django's save() writes: each field's pre_save
    (auto_now_add...) and database value; an inserted row without a primary key gets the one the
    database gave it. No signals are sent (the services' models have no receivers), no full_clean
    (the services check their input; the tables' constraints still apply)."""

    def __init__(self) -> None:
        self._parts: list[tuple[tuple[bool, type[Model], tuple[str, ...]], list[Model]]] = []

    def insert(self, rows: Sequence[Model]) -> None:
        """Insert `rows` (of one model; all with a primary key set, or none)."""
        if rows:
            model = type(rows[0])
            key = (True, model, ("pk",) if rows[0].pk is not None else ())
            if key not in _WRITE_FIELDS:
                _WRITE_FIELDS[key] = [f for f in model._meta.concrete_fields if key[2] or not f.primary_key]
                _WRITE_READERS[key] = [value_reader(f, True) for f in _WRITE_FIELDS[key]]
            self._parts.append((key, list(rows)))

    def update(self, rows: Sequence[Model], fields: Sequence[str]) -> None:
        """Write `fields` of `rows` (of one model, each with its primary key)."""
        if rows:
            model = type(rows[0])
            key = (False, model, tuple(fields))
            if key not in _WRITE_FIELDS:
                opts = model._meta
                _WRITE_FIELDS[key] = [opts.pk, *(opts.get_field(name) for name in fields)]  # type: ignore[list-item]
                _WRITE_READERS[key] = [value_reader(f, False) for f in _WRITE_FIELDS[key]]
            self._parts.append((key, list(rows)))

    def run(self) -> None:
        """Write everything added, in one statement; the rows inserted get their primary keys."""
        if not self._parts:
            return
        shape = tuple(key for key, _rows in self._parts)
        sql = _WRITE_SQL.get(shape)
        if sql is None:
            sql = _WRITE_SQL[shape] = _write_sql(shape)
        params = [array_literal(map(read, rows)) for key, rows in self._parts for read in _WRITE_READERS[key]]
        with cursor_prepared() as cursor:
            cursor.execute(sql, params)
            given = cursor.fetchall()
        # A statement takes its sequence's values in the order it inserts the rows: in order, they
        # are the rows' keys in the order given.
        keys: dict[int, list[int]] = {}
        for n, pk in given:
            keys.setdefault(n, []).append(pk)
        for n, (key, rows) in enumerate(self._parts):
            if key[0]:
                for row, pk in zip(rows, sorted(keys.get(n, [])), strict=False):
                    row.pk = pk
                for row in rows:
                    row._state.adding, row._state.db = False, DEFAULT_DB_ALIAS
        self._parts = []


def business_open_day(business: Business) -> dt.date:
    """The day new work is dated on: today, or the next day once today is closed (the automatic
    end-of-day closing at the business's closing time, or a closing by hand). What is recorded
    after the closing belongs to the next business day, as late M-Pesa payments do (docs/operations.md)."""
    today = timezone.localdate()
    lock_date = books_lock_date(business_id=business.pk)
    if lock_date is not None and lock_date >= today:
        return lock_date + dt.timedelta(days=1)
    return today


def day_open_check(business: Business, day: dt.date) -> None:
    """Raise DayClosed if `day` is on or before the business's lock date, InvalidInput if it is
    a day that has not come yet. Once today is closed, the next day is open: work recorded after
    the closing (a sale at 21:30) is dated on it rather than refused until midnight."""
    day_open_at(business, day, books_lock_date(business_id=business.pk))


def day_open_at(business: Business, day: dt.date, lock_date: dt.date | None) -> None:
    """day_open_check with the lock date already read."""
    today = timezone.localdate()
    latest = lock_date + dt.timedelta(days=1) if lock_date is not None and lock_date >= today else today
    if day > latest:
        raise InvalidInput(f"{day:%d %b %Y} is in the future: record it on the day it happens.")
    if lock_date is not None and day <= lock_date:
        first_open = lock_date + dt.timedelta(days=1)
        raise DayClosed(
            f"{day:%d %b %Y} is closed for {business}: the books are closed up to {lock_date:%d %b %Y}. "
            f"Record it on an open day ({first_open:%d %b %Y} or later)."
        )


def money(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


QUANTUM = Decimal("0.001")  # the places of a QuantityField


def quantity_checked(value: Decimal, what: str = "A quantity") -> Decimal:
    """A quantity given to a service as the database stores it (3 decimals, rounded half away from
    zero as PostgreSQL rounds), refused unless more than zero (the tables refuse it too). For the
    services that compute with it before the row is written."""
    quantity = Decimal(value).quantize(QUANTUM, rounding=ROUND_HALF_UP)
    if quantity <= 0:
        raise InvalidInput(f"{what} must be more than zero, not {value}.")
    return quantity


def amount_stored(value: Decimal) -> Decimal:
    """An amount given to a service as a MoneyField stores it (2 decimals, rounded as PostgreSQL rounds)."""
    return money(Decimal(value))


def vat_split(gross: Decimal, tax_rate: str) -> tuple[Decimal, Decimal]:
    """(net, VAT) of a VAT-inclusive amount: VAT = round(gross * rate / (100 + rate), 2)."""
    rate = VAT_PERCENT[tax_rate]
    if not rate:
        return gross, ZERO
    vat = money(gross * rate / (100 + rate))
    return gross - vat, vat


def sales_role_of(item: Any) -> str:
    """The account role an item's sale credits; refused if the catalogue does not say."""
    if not item.sales_role:
        raise InvalidInput(f"{item} has no sales account: set its sales role in the catalogue first.")
    return str(item.sales_role)


def acting(user: Any) -> Any:
    """The user to store on a row (None for a system run)."""
    return user if getattr(user, "pk", None) else None


def same_business(business: Business, rows: Iterable[Any], what: str) -> None:
    """Refuse a related row (an item, a supplier, a till) of another business than the document's.

    Every service that takes a document with related rows calls it before moving anything: the
    admin, an import or raw SQL can put an item of one business on a document of another, and
    posting it would move that business's stock against this one's books.
    """
    for row in rows:
        if row is not None and row.business_id != business.pk:
            raise InvalidInput(f"{what} {row} belongs to another business")


def same_business_items(business: Business, items: Iterable[Any]) -> None:
    """`same_business` for catalogue items and the items they move (`stock_item`, `returns_item`)."""
    for item in items:
        same_business(business, [item], "Item")
        linked = [item.stock_item if item.stock_item_id else None, item.returns_item if item.returns_item_id else None]
        same_business(business, linked, f"The stock moved by {item},")
