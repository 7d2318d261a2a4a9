-- 0004: evaluate a row policy in Postgres for one row and many subscribers' claims.
--
-- Why: the relay evaluates the common policy shapes itself (exactly, in-process).  An expression
-- outside those shapes is never approximated: the relay asks Postgres, once per change and per
-- distinct claims, through this function.  The expression is the policy's `using_expr` rewritten
-- by the relay so that `claims` (a jsonb) is the only source of claims (auth.uid() becomes
-- `(claims ->> 'sub')::uuid`, ...), which lets one call cover many subscribers.  Each claims value
-- is evaluated in its own subtransaction: one subscriber whose claims make the expression fail
-- (a bad cast, say) gets its error back and does not stop the others.
--
-- `rec` is the row as JSON in the relay's value model; jsonb_populate_record turns it back into
-- a row of the table's type, so the expression sees real column types.

create or replace function realtime.eval_policy(expr text, tbl regclass, rec jsonb, claims jsonb[])
returns table (idx int, result boolean, error text)
language plpgsql
volatile
-- no pinned search_path: a policy may call the DBA's own functions, resolved as when it was created
as $$
declare
    c    jsonb;
    i    int := 0;
    r    boolean;
    q    text := pg_catalog.format(
        'select (%s)::boolean from pg_catalog.jsonb_populate_record(null::%s, $1) as t, '
        '(select $2::jsonb as claims) as c', expr, tbl);
begin
    foreach c in array claims loop
        i := i + 1;
        begin
            execute q into r using rec, c;
            idx := i; result := r; error := null;
        exception when others then
            idx := i; result := null; error := sqlstate || ': ' || sqlerrm;
        end;
        return next;
    end loop;
end;
$$;

comment on function realtime.eval_policy(text, regclass, jsonb, jsonb[]) is
    'Relay slow path: evaluate a (rewritten) row policy expression for one row and many claims';
