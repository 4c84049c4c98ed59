"""Request bodies for the tests."""

from datetime import date, timedelta

import factory


class TaskPayload(factory.DictFactory):
    title = factory.Faker("sentence", nb_words=3)
    due = factory.LazyFunction(lambda: (date.today() + timedelta(days=7)).isoformat())
