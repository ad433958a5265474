import pytest

# The helper modules assert too: let pytest explain their failures as it does the tests'.
pytest.register_assert_rewrite("tests.frontend", "tests.histories", "tests.models", "tests.oa_contract")
