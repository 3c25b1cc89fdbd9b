from study.errors import UserError


def test_user_error_is_value_error():
    assert issubclass(UserError, ValueError)
